"""Every option of every config group composes, resolves, and matches the constructor it names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from nnn.loggers import NullLogger
from nnn.methods import RetrievalMethod
from nnn.config_dir import translate_overrides
from nnn.config_dir import CONFIG_DIR
from nnn.settings import build_method, compose

REPO = CONFIG_DIR.parent
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONFIG_DIR / g).glob("*.yaml"))]


def _targets(node, path="") -> list[tuple[str, DictConfig]]:
    """Every ``_target_`` node inside ``node`` with its key path."""
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            found += _targets(node._get_node(key), f"{path}.{key}".lstrip("."))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            found += _targets(item, f"{path}[{i}]")
    return found


def _check_keys_match(path: str, node: DictConfig) -> None:
    target = get_method(node._target_)
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node if not str(k).startswith("_") and k not in set(params)]
    assert not unknown, f"{path}: keys {unknown} are not parameters of {node._target_}"


def test_groups_exist():
    for group in ("model", "dataset", "reference", "method", "logger", "paths", "experiment",
                  "sweep", "debug"):
        assert group in GROUPS, f"config group {group}/ is missing"
    assert {"none", "nnn", "qb_norm", "db_norm", "dn", "csls", "mp", "ls", "dsl"} <= {
        o for g, o in OPTIONS if g == "method"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["name"]
    for path, node in _targets(cfg):
        _check_keys_match(path, node)


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "method"])
def test_method_options_instantiate(option):
    method = build_method(compose([f"method={option}"]))
    assert isinstance(method, RetrievalMethod)


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "logger"])
def test_logger_options_instantiate(option):
    assert isinstance(instantiate(compose([f"logger={option}"]).logger), NullLogger)


def test_defaults_are_the_offline_experiment():
    cfg = compose()
    assert cfg.dataset._target_.endswith("SyntheticDataset")
    assert "_target_" not in cfg.model  # model=none: the dataset holds the embeddings
    assert cfg.method._target_ == "nnn.methods.NNN"
    assert cfg.logger._target_ == "nnn.loggers.WandbLogger" and cfg.logger.mode == "offline"
    assert cfg.reference.fraction == 0.2


@pytest.mark.parametrize("overrides", [["model=clip", "dataset=coco"],
                                       ["model=blip_flickr", "dataset=flickr30k", "extract=ddp"],
                                       ["dataset=precomputed", "experiment=flickr1k_clip_vitl14"]])
def test_combinations_compose(overrides):
    cfg = compose(overrides)
    OmegaConf.to_container(cfg, resolve=True)
    for path, node in _targets(cfg):
        _check_keys_match(path, node)


def test_experiment_needs_no_plus():
    experiments = [o for g, o in OPTIONS if g == "experiment"]
    assert experiments, "conf/experiment/ needs at least one example"
    assert compose([f"experiment={experiments[0]}"]).name


def test_no_secret_keys_in_configs():
    for path in CONFIG_DIR.rglob("*.yaml"):
        text = path.read_text().lower()
        assert "api_key" not in text and "wandb_api" not in text, path


def test_help_lists_groups_and_examples():
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("method:", "dataset:", "Examples", "python run.py -m"):
        assert word in out.stdout


@pytest.mark.parametrize("overrides", [[], ["method=dn", "experiment=flickr1k_clip_vitl14"]])
def test_plain_help_is_hydras_help_text(run_py, capsys, overrides):
    """run.py answers a plain --help itself (nnn.config_dir.app_help, without Hydra's slow group
    listing); the text is Hydra's, which a hydra.* override still gets."""
    assert run_py("--help", *overrides, "hydra.job.chdir=false") == 0
    hydra_text = capsys.readouterr().out
    assert run_py("--help", *overrides) == 0
    assert capsys.readouterr().out == hydra_text and "method: " in hydra_text


def test_help_with_an_unknown_option_is_hydras_error(run_py, capsys):
    assert run_py("--help", "method=no_such_method") == 1
    assert "no_such_method" in capsys.readouterr().err


@pytest.mark.parametrize("args, plain", [(["--help"], True), (["-h", "method=dn"], True),
                                         (["method=dn"], False), (["--help", "--resolve"], False),
                                         (["--help", "hydra.verbose=true"], False),
                                         (["--help", "+x=1"], False), (["--hydra-help"], False)])
def test_which_help_run_py_answers_itself(args, plain):
    from nnn.config_dir import is_plain_help

    assert is_plain_help(args) is plain


def test_old_tune_switch_is_an_alias_of_tune_enabled():
    assert translate_overrides(["-m", "method.tune=true,false", "method.k=4", "method.tuned=x",
                                "tune.enabled=true,false"]) == [
        "-m", "tune.enabled=true,false", "method.k=4", "method.tuned=x", "tune.enabled=true,false"]
    assert translate_overrides(["+method.tune=1"]) == ["tune.enabled=1"]
    cfg = compose(["method=dn", "method.tune=true"])
    assert cfg.tune.enabled is True and "tune" not in cfg.method
    assert compose([]).tune.enabled is False


def test_tune_switch_and_its_alias_must_agree():
    with pytest.raises(ValueError, match=r"method\.tune=true and tune\.enabled=false contradict "
                                         r"each other.*give tune\.enabled once"):
        translate_overrides(["method.tune=true", "tune.enabled=false"])


@pytest.mark.parametrize("args, agree", [(["method.tune=1", "tune.enabled=true"], True),
                                         (["method.tune=True", "tune.enabled=yes"], True),
                                         (["method.tune=1,0", "tune.enabled=true,false"], True),
                                         (["method.tune=1", "tune.enabled=false"], False)])
def test_tune_switch_and_alias_are_compared_as_booleans(args, agree):
    if agree:
        assert translate_overrides(args) == [a.replace("method.tune", "tune.enabled") for a in args]
    else:
        with pytest.raises(ValueError, match="contradict each other"):
            translate_overrides(args)


@pytest.mark.parametrize("arg, instead", [("~method", "choose method=none"),
                                         ("~logger", "choose logger=none"),
                                         ("~dataset", "choose one of its options (coco, ")])
def test_a_group_every_run_needs_cannot_be_deleted(arg, instead):
    with pytest.raises(ValueError, match=f"{arg}: {arg[1:]} cannot be deleted") as err:
        compose([arg])
    assert instead in str(err.value)
    assert translate_overrides([f"{arg}.x"]) == [f"{arg}.x"]  # a key of the node: as before


def test_tuning_auto_is_spelled_as_the_data_layer_reads_it():
    from nnn.config_dir import TUNING_AUTO
    from nnn.data.assemble import TUNING_AUTO as data_auto

    assert TUNING_AUTO == data_auto
