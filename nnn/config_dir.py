"""Where the Hydra configs of a source checkout live, the resolver they use for paths, the
spelling of command-line overrides (``translate_overrides``: the old ``method.tune`` switch), the
text of ``run.py --help`` built from them (``app_help``, without Hydra's slow group listing) and
Hydra's composition errors said in one line (``composition_error``).

Importing this module registers ``${nnn.repo_root:}`` (the checkout that holds ``conf/``), so
that default paths beside the checkout (``paths.shared_data``) do not depend on the current
directory. It imports nothing heavy, so ``run.py`` can register it before Hydra composes.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

#: the configs of a source checkout (conf/ beside the package)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
#: ``${nnn.repo_root:}`` in the configs
REPO_ROOT_RESOLVER = "nnn.repo_root"

OmegaConf.register_new_resolver(REPO_ROOT_RESOLVER, lambda: str(CONFIG_DIR.parent), replace=True)


#: what to do when the output folder (conf/paths: ``paths.output_root``) cannot be written
OUTPUT_DIR_REMEDY = ("set NNN_OUTPUT_DIR (paths.output_root) to a folder you can write and that "
                     "has space, or choose one with hydra.run.dir= / hydra.sweep.dir=")
#: the flags that ask run.py for help
HELP_FLAGS = ("--help", "-h")
#: the tuning switch (conf/config.yaml ``tune``) and its older spelling, still accepted
TUNE_SWITCH = "tune.enabled"
TUNE_ALIAS = "method.tune"
#: ``reference.tuning_size=auto``: a tuning part when one is needed (read by
#: ``nnn.data.assemble``; defined here, where checking a config needs it without torch)
TUNING_AUTO = "auto"
#: the config groups every run needs: ``~GROUP`` is refused (``translate_overrides``)
REQUIRED_GROUPS = ("method", "dataset", "reference", "logger", "paths", "extract")


def _switch_values(value: str):
    """The booleans of a tune switch's ``VALUE`` as Hydra and OmegaConf read them (``1``,
    ``True`` and ``yes`` are all true; one, or each of a sweep's ``true,false``), or the text
    itself where it is no boolean (OmegaConf then refuses it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf.errors import ValidationError
    from omegaconf.nodes import BooleanNode

    try:
        override = OverridesParser.create().parse_override(f"{TUNE_SWITCH}={value}")
        return tuple(BooleanNode(v)._value() for v in _values(override))
    except (OverrideParseException, ValidationError):
        return value


def _refuse_deletion(arg: str) -> None:
    """``ValueError`` for ``~GROUP`` of a group every run needs (``REQUIRED_GROUPS``), with the
    option that turns it off where the group has one (``method=none``)."""
    group = arg[1:].partition("=")[0]
    if not arg.startswith("~") or group not in REQUIRED_GROUPS:
        return
    options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    instead = f"choose {group}=none" if "none" in options else \
        f"choose one of its options ({', '.join(options)})"
    raise ValueError(f"{arg}: {group} cannot be deleted, every run needs one; {instead}")


def translate_overrides(args: list[str]) -> list[str]:
    """Command-line ``args`` with ``[+]method.tune=VALUE`` spelled ``tune.enabled=VALUE`` (a
    sweep's ``method.tune=true,false`` included); every other argument unchanged. Used by
    ``run.py`` and ``nnn.settings.compose``, so both accept the alias. ``ValueError`` when the
    alias and ``tune.enabled`` are both given with different values (compared as booleans:
    ``method.tune=1 tune.enabled=true`` agree), or for ``~GROUP`` of a group every run needs
    (``~method``)."""
    out, given = [], {}
    for arg in args:
        _refuse_deletion(arg)
        key, eq, value = arg.lstrip("+").partition("=")
        if eq and key in (TUNE_ALIAS, TUNE_SWITCH):
            given.setdefault(_switch_values(value), arg)
            arg = f"{TUNE_SWITCH}={value}"
        out.append(arg)
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given.values())} contradict each other ({TUNE_ALIAS} is "
                         f"the older name of {TUNE_SWITCH}): give {TUNE_SWITCH} once")
    return out


def _overrides(args: list[str]) -> list[str]:
    """The overrides of the command line ``args``, as Hydra's own argument parser finds them:
    flags and their values (``--cfg job``, ``-cn NAME``, ``--info defaults``) left out. Where
    that parser refuses ``args`` (Hydra then says why itself), the arguments but flags."""
    import argparse

    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        return parser.parse_known_args(args)[0].overrides
    except (argparse.ArgumentError, SystemExit):
        return [a for a in args if not a.startswith("-")]


def _parse(args: list[str]) -> list[tuple[str, object]]:
    """(override, its parsed Hydra ``Override``, or the ``OverrideParseException`` that Hydra's
    grammar raised for it) for each override of the command line ``args`` (``_overrides``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, out = OverridesParser.create(), []
    for arg in _overrides(args):
        try:
            out.extend((arg, o) for o in parser.parse_overrides([arg]))
        except OverrideParseException as err:
            out.append((arg, err))
    return out


def _values(override) -> list[str]:
    """The values of a parsed ``Override``: one, or each of a sweep's."""
    return list(override.sweep_string_iterator()) if override.is_sweep_override() \
        else [override.get_value_element_as_str()]


def _given(args: list[str], wanted, fallback: str) -> str:
    """The first of ``args`` whose parsed override satisfies ``wanted``, else ``fallback``."""
    return next((arg for arg, o in _parse(args) if not isinstance(o, Exception) and wanted(o)),
                fallback)


def _unknown_option(err, args: list[str]) -> str:
    """``group=name``, an option that no file of ``conf/<group>/`` holds (``err``: Hydra's
    ``MissingConfigException``), with the options there."""
    group, _, name = err.missing_cfg_file.rpartition("/")
    override = _given(args, lambda o: o.key_or_group == group and name in _values(o),
                      f"{group}={name}")
    return (f"{override}: {group} has no option {name!r}; choose one of "
            f"{', '.join(err.options)}")


def _is_unknown_key(cause) -> bool:
    """Whether OmegaConf's error ``cause`` is a key absent from a dict node (``method.kk=3``),
    not a value of the wrong type, a list index or a key below a single value."""
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    parent = getattr(cause, "parent_node", None)
    return isinstance(cause, (ConfigAttributeError, ConfigKeyError)) \
        and isinstance(parent, DictConfig) and getattr(cause, "key", None) not in parent


def _dotted(full_key: str) -> str:
    """OmegaConf's ``full_key`` as an override spells it: ``eval.ks[5]`` is ``eval.ks.5``."""
    return re.sub(r"\[([^\]]*)\]", r".\1", full_key)


def _named_override(cause, args: list[str], fallback: str) -> str:
    """The argument of ``args`` that sets the key of OmegaConf's error ``cause``, else
    ``fallback``."""
    key = _dotted(str(getattr(cause, "full_key", "") or ""))
    return _given(args, lambda o: o.key_or_group == key, fallback)


def _unknown_key(cause, args: list[str]) -> str:
    """``a.b.key=VALUE`` for a key that the dict node ``a.b`` does not have (``cause``:
    OmegaConf's error, whose ``parent_node`` is that node), with the keys it has. A node without
    keys may be an empty one or a single value that OmegaConf replaced by an empty node to look
    the key up (``method.k.x=1``): the line says both."""
    node, _, key = cause.full_key.rpartition(".")
    override = _named_override(cause, args, f"{cause.full_key}=VALUE")
    keys = [str(k) for k in cause.parent_node.keys() if not str(k).startswith("_")
            and k != "hydra"]
    if not keys:
        return (f"{override}: {node} has no key {key!r}: it holds a single value or is empty; "
                f"set {node}=VALUE, or add a key to an empty node with +{override.lstrip('+')}")
    return (f"{override}: {node or 'the config'} has no key {key!r} (its keys are "
            f"{', '.join(keys)}); correct the name, or add a new key with "
            f"+{override.lstrip('+')}")


def _refused_value(err, cause, args: list[str]) -> str:
    """The override that OmegaConf refused (``cause``: its error, e.g. a value of the wrong
    type or a list index out of range) with OmegaConf's reason; Hydra's message ``err`` where
    there is no cause."""
    if cause is None:
        return " ".join(str(err).split())
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return f"{_named_override(cause, args, str(err).splitlines()[0])}: {first}"


def _override_being_applied(err: BaseException) -> str | None:
    """The override whose application raised ``err`` when that is not an OmegaConf error:
    ``OmegaConf.update`` raises a bare ``ValueError`` for a word where a list wants an index
    (``eval.ks.x=3``), which Hydra lets escape without naming the override, so it is read from
    the frame of Hydra's loop over the overrides; None anywhere else."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_apply_overrides_to_config":
            line = getattr(frame.f_locals.get("override"), "input_line", None)
            return line if isinstance(line, str) else None
        tb = tb.tb_next
    return None


def _unparsable(err, args: list[str]) -> str:
    """The first of ``args`` that Hydra's override grammar cannot read, with its reason."""
    arg, err = next(((a, o) for a, o in _parse(args) if isinstance(o, Exception)),
                    ("an override", err))
    return (f"{arg}: {str(err).splitlines()[0]}; quote values with commas or brackets (see "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)")


def composition_error(err: BaseException, args: list[str]) -> str | None:
    """One line for a Hydra composition error ``err`` of the command line ``args``: an unknown
    option of a group (``method=nnnn``: the group's options), an unknown key (``method.kk=3``:
    the node's keys), an override Hydra cannot parse (which one), a value OmegaConf refuses
    (``hydra.job.chdir=maybe``: the override and OmegaConf's reason), else Hydra's own message
    on one line; None when ``err`` is not a composition error, or when saying it fails (then
    Hydra's own report is kept)."""
    try:
        return _composition_line(err, args)
    except Exception:  # noqa: BLE001  a slip in these messages must not hide Hydra's report
        return None


def _composition_line(err: BaseException, args: list[str]) -> str | None:
    """``composition_error`` without its safety net."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, \
        OverrideParseException

    cause = err.__cause__
    applying = _override_being_applied(err)
    if applying is not None:
        key, _, value = applying.lstrip("+~").partition("=")
        node = key.rpartition(".")[0] or key
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return (f"{applying}: OmegaConf refused it ({first}); if {node} is a list, index it "
                f"with a number ({node}.0={value}) or set it whole ({node}=[...]); "
                "python run.py --cfg job shows the config")
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return _unknown_option(err, args)
    if isinstance(err, OverrideParseException):
        return _unparsable(err, args)
    if not isinstance(err, ConfigCompositionException):
        return None
    if _is_unknown_key(cause):
        return _unknown_key(cause, args)
    return _refused_value(err, cause, args)


def is_plain_help(args: list[str]) -> bool:
    """True for ``--help`` (or ``-h``) with nothing but plain ``key=value`` overrides of the app's
    own config, the case ``app_help`` reproduces; anything else (Hydra flags, ``hydra.*``
    overrides, ``--resolve``) is left to Hydra."""
    flags = [a for a in args if a in HELP_FLAGS]
    rest = [a for a in args if a not in flags]
    return bool(flags) and all("=" in a and not a.startswith(("-", "+", "~", "hydra"))
                               for a in rest)


def _app_groups() -> str:
    """Hydra's "group: option, option" lines for the groups under ``CONFIG_DIR`` (not hydra/)."""
    lines = []
    for group in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        name = group.relative_to(CONFIG_DIR).as_posix()
        options = sorted(p.stem for p in group.glob("*.yaml"))
        if options and name != "hydra" and not name.startswith("hydra/"):
            lines.append(f"{name}: {', '.join(options)}\n")
    return "".join(lines)


def app_help(args: list[str]) -> str:
    """The text of ``python run.py --help [overrides]`` (``args``: the command line after the
    script, help flags included), as Hydra's help template gives it.

    Written by hand because Hydra's own help lists the config groups by deep-copying its whole
    config repository once per group, its 90-odd groups included, even where the template shows
    only the app's: ~4.6 s of profiled CPU, 2.1 s of wall time, most of ``--help``. Here the groups
    come from the folders of ``CONFIG_DIR`` (the same lines), the config from Hydra's compose
    API; ``tests/test_configs.py`` checks the text equals Hydra's.
    """
    import string

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[a for a in args if a not in HELP_FLAGS],
                      return_hydra_config=True)
    template = cfg.hydra.help.template
    app_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return string.Template(template).substitute(
        APP_CONFIG_GROUPS=_app_groups(), CONFIG=OmegaConf.to_yaml(app_cfg),
        FLAGS_HELP="", HYDRA_CONFIG_GROUPS="")
