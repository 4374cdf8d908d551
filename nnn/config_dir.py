"""Where the Hydra configs of a source checkout live, the resolver they use for paths, the
spelling of command-line overrides (``translate_overrides``: the old ``method.tune`` switch) and
the text of ``run.py --help`` built from them (``app_help``, without Hydra's slow group listing).

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


#: the flags that ask run.py for help
HELP_FLAGS = ("--help", "-h")
#: the tuning switch (conf/config.yaml ``tune``) and its older spelling, still accepted
TUNE_SWITCH = "tune.enabled"
TUNE_ALIAS = "method.tune"


def translate_overrides(args: list[str]) -> list[str]:
    """Command-line ``args`` with ``[+]method.tune=VALUE`` spelled ``tune.enabled=VALUE`` (a
    sweep's ``method.tune=true,false`` included); every other argument unchanged. Used by
    ``run.py`` and ``nnn.settings.compose``, so both accept the alias."""
    out = []
    for arg in args:
        key, eq, value = arg.lstrip("+").partition("=")
        out.append(f"{TUNE_SWITCH}={value}" if eq and key == TUNE_ALIAS else arg)
    return out


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
