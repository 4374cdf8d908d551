"""Where the Hydra configs of a source checkout live, the resolver they use for paths, the
spelling of command-line overrides (``translate_overrides``: the old ``method.tune`` switch), the
text of ``run.py --help`` built from them (``app_help``, without Hydra's slow group listing) and
Hydra's composition errors said in one line (``composition_error``).

Importing this module registers ``${nnn.repo_root:}`` (the checkout that holds ``conf/``), so
that default paths beside the checkout (``paths.shared_data``) do not depend on the current
directory. It imports nothing heavy, so ``run.py`` can register it before Hydra composes.
"""

from __future__ import annotations

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


def translate_overrides(args: list[str]) -> list[str]:
    """Command-line ``args`` with ``[+]method.tune=VALUE`` spelled ``tune.enabled=VALUE`` (a
    sweep's ``method.tune=true,false`` included); every other argument unchanged. Used by
    ``run.py`` and ``nnn.settings.compose``, so both accept the alias. ``ValueError`` when the
    alias and ``tune.enabled`` are both given with different values."""
    out, given = [], {}
    for arg in args:
        key, eq, value = arg.lstrip("+").partition("=")
        if eq and key in (TUNE_ALIAS, TUNE_SWITCH):
            given.setdefault(value.lower(), arg)
            arg = f"{TUNE_SWITCH}={value}"
        out.append(arg)
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given.values())} contradict each other ({TUNE_ALIAS} is "
                         f"the older name of {TUNE_SWITCH}): give {TUNE_SWITCH} once")
    return out


def _parse(args: list[str]) -> list[tuple[str, object]]:
    """(argument, its parsed Hydra ``Override``, or the ``OverrideParseException`` that Hydra's
    grammar raised for it) for each of ``args`` but flags (``-m``, ``--help``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, out = OverridesParser.create(), []
    for arg in args:
        if not arg.startswith("-"):
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


def _unknown_key(cause, args: list[str]) -> str:
    """``a.b.key=VALUE`` for a key that the config node ``a.b`` does not have (``cause``:
    OmegaConf's error, whose ``parent_node`` is that node), with the keys it has."""
    node, _, key = cause.full_key.rpartition(".")
    override = _given(args, lambda o: o.key_or_group == cause.full_key, f"{cause.full_key}=VALUE")
    keys = [str(k) for k in cause.parent_node.keys() if not str(k).startswith("_")
            and k != "hydra"]
    has = f"its keys are {', '.join(keys)}" if keys else "it is empty"
    return (f"{override}: {node or 'the config'} has no key {key!r} ({has}); correct the name, "
            f"or add a new key with +{override.lstrip('+')}")


def _unparsable(err, args: list[str]) -> str:
    """The first of ``args`` that Hydra's override grammar cannot read, with its reason."""
    arg, err = next(((a, o) for a, o in _parse(args) if isinstance(o, Exception)),
                    ("an override", err))
    return (f"{arg}: {str(err).splitlines()[0]}; quote values with commas or brackets (see "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)")


def composition_error(err: BaseException, args: list[str]) -> str | None:
    """One line for a Hydra composition error ``err`` of the command line ``args``: an unknown
    option of a group (``method=nnnn``: the group's options), an unknown key (``method.kk=3``:
    the node's keys), an override Hydra cannot parse (which one), else Hydra's own message on
    one line; None when ``err`` is not a composition error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, \
        OverrideParseException

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return _unknown_option(err, args)
    if isinstance(err, OverrideParseException):
        return _unparsable(err, args)
    if not isinstance(err, ConfigCompositionException):
        return None
    if getattr(cause, "full_key", None) and getattr(cause, "parent_node", None) is not None:
        return _unknown_key(cause, args)
    first = str(cause).splitlines()[0] if cause is not None else ""
    return " ".join(f"{err} {first}".split())


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
