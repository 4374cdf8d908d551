"""The config read into plain values: everything the pipeline's steps take from ``cfg`` and from
Hydra's job (its choices, the sweep it belongs to).

With ``nnn.pipeline`` the only module that reads the config: the pipeline orders the steps,
this module answers its questions about the config (which method with which keywords, is tuning
on, does a sweeper select, where do the references come from, how is a split evaluated) and
checks the config before any data is loaded (``check_config``). ``compose`` gives the config
outside ``run.py`` (notebooks, tests).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

# also registers ${nnn.repo_root:}
from nnn.config_dir import CONFIG_DIR, TUNE_SWITCH, TUNING_AUTO, translate_overrides
from nnn.results import metric_names

if TYPE_CHECKING:
    from nnn.evaluation import EvalSettings

#: the Hydra choice key of the reference set's own dataset (``dataset@reference.dataset=coco``)
REFERENCE_DATASET_CHOICE = "dataset@reference.dataset"
#: the config node of the reference set's own dataset, which its messages name (``config_key``)
REFERENCE_DATASET_KEY = "reference.dataset"


def hydra_job() -> DictConfig | None:
    """Hydra's config of the running job (choices, mode, sweep), or None outside a Hydra job."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def compose(overrides: list[str] = (), *, config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """The project's config with ``overrides`` (as on the command line), outside ``run.py``.

    For notebooks and tests: ``run(compose(["method=dn"]), output_dir=...)``. It also sets
    Hydra's global config, so ``${hydra:runtime.cwd}`` interpolations resolve as in a run.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=translate_overrides(list(overrides)),
                            return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def reference_dataset_config(cfg: DictConfig) -> DictConfig | None:
    """The config of the dataset the references come from (``reference.dataset``, chosen with
    ``dataset@reference.dataset=NAME``), or None when they come from the evaluation dataset:
    ``reference.dataset`` is null, the same option as ``dataset``, or an identical config.

    A dataset whose messages name its config node (its config has ``config_key``, e.g. "set
    dataset.root") gets ``config_key=reference.dataset``, the node the user must set."""
    ref = cfg.reference.get("dataset")
    if ref is None:
        return None
    hc = hydra_job()
    if hc is not None:
        choices = hc.runtime.choices
        if choices.get(REFERENCE_DATASET_CHOICE) == choices.get("dataset"):
            return None
    if ref == cfg.dataset:
        return None
    if "config_key" in ref:
        ref = ref.copy()
        with open_dict(ref):
            ref.config_key = REFERENCE_DATASET_KEY
    return ref


def reference_dataset_name(cfg: DictConfig, dataset_name: str) -> str:
    """``data.reference_dataset`` of the results: the option name (or class) of the reference
    dataset; ``dataset_name`` (the evaluation dataset's) when the references come from it."""
    ref = reference_dataset_config(cfg)
    if ref is None:
        return dataset_name
    hc = hydra_job()
    choice = hc.runtime.choices.get(REFERENCE_DATASET_CHOICE) if hc is not None else None
    return choice or str(ref.get("_target_", "?")).rsplit(".", 1)[-1]


def selecting_sweeper() -> str | None:
    """The sweeper's class when this job belongs to a sweep whose sweeper *selects* parameters
    by the objective (``nnn.hydra_callbacks.selecting_sweeper``: Optuna, Nevergrad, ...)."""
    from nnn.hydra_callbacks import selecting_sweeper as of_hydra

    hc = hydra_job()
    return None if hc is None or hc.mode != RunMode.MULTIRUN else of_hydra(hc)


def has_tuning_part(cfg: DictConfig) -> bool:
    """Whether the run holds a tuning part out (``reference.tuning_size``: a number > 0,
    "test", or "auto" when ``needs_tuning_part``), where the objective is then measured."""
    size = cfg.reference.tuning_size
    return needs_tuning_part(cfg) if size == TUNING_AUTO else size not in (0, "0")


def needs_tuning_part(cfg: DictConfig) -> bool:
    """Whether ``reference.tuning_size=auto`` holds out a tuning part: the method is tuned, or
    a selecting sweeper needs an objective that is not measured on test."""
    return tuning_requested(cfg) or selecting_sweeper() is not None


def method_name(cfg: DictConfig) -> str:
    return str(cfg.method.get("_target_", "?")).rsplit(".", 1)[-1]


def method_params(cfg: DictConfig) -> dict[str, Any]:
    """cfg.method as constructor keywords (with ``_target_``)."""
    return OmegaConf.to_container(cfg.method, resolve=True)


def _checked(node: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (the config node ``node`` as keywords, with ``_target_``), once it is checked
    that the target takes every key: else ``ValueError`` naming the first it does not (e.g.
    ``+method.kk=3``) and the keys it takes."""
    from hydra.utils import get_object

    taken = inspect.signature(get_object(params["_target_"])).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken.values()):
        return params
    bad = [k for k in params if not k.startswith("_") and k not in taken]
    if bad:
        raise ValueError(f"{node}.{bad[0]}: {params['_target_'].rsplit('.', 1)[-1]} has no "
                         f"parameter {bad[0]!r} (it takes {', '.join(taken)}); remove the key or "
                         f"correct its name{_set_by_debug(node)}")
    return params


def _set_by_debug(node: str) -> str:
    """Where a dataset's unknown key may come from: ``debug=tiny`` sizes the synthetic dataset
    (``n_train``, ``dim``, ...), which another ``dataset=`` does not take."""
    hc = hydra_job()
    debug = hc.runtime.choices.get("debug") if hc is not None else None
    return "" if not debug or node not in ("dataset", REFERENCE_DATASET_KEY) else \
        f" (debug={debug} sets it for the synthetic dataset: drop debug={debug} with this one)"


def build(node, key: str | None = None):
    """The object a config node (or a dict with ``_target_``) describes, given plain Python
    values: lists and dicts, never OmegaConf's ``ListConfig`` / ``DictConfig``. ``key``: the
    node's place in the config (``dataset``), whose keys are then checked first (``_checked``:
    a key the target does not take is a ``ValueError`` naming it, not Hydra's ``TypeError``)."""
    if key is not None:
        node = _checked(key, OmegaConf.to_container(node, resolve=True)
                        if OmegaConf.is_config(node) else dict(node))
    return instantiate(node, _convert_="all")


def build_method(cfg: DictConfig):
    return build(cfg.method, "method")


def check_k_fits(cfg: DictConfig, test, reference, directions) -> None:
    """The method's fixed neighbourhood size (``method.k``, ``method.k_max``) against the query
    bank of each of ``directions`` (the ones not tuned; the tuners cut their grids themselves),
    before any direction is evaluated: too large is a ``ValueError`` naming the settings that
    fix it. ``test``/``reference``: the run's ``EmbeddingSet``s."""
    from nnn.task import RetrievalTask

    method = build_method(cfg)
    for direction in directions:
        bank = len(RetrievalTask.from_sets(test, reference, direction).query_bank)
        for key in ("k", "k_max"):
            k = getattr(method, key, None)
            if isinstance(k, int) and k > bank:
                what = "captions" if direction == "t2i" else "images"
                raise ValueError(
                    f"method.{key}={k} is larger than the {bank} reference {what} of the "
                    f"{direction} query bank; use method.{key} <= {bank}, or more references "
                    f"(reference.fraction={cfg.reference.fraction} of the "
                    f"{cfg.reference.source} split), or tune it (tune.enabled=true)")


def build_logger(cfg: DictConfig):
    """``cfg.logger`` instantiated; a setting it refuses (``logger.mode=bogus``) or does not
    take is a ``ValueError``, like any other config mistake."""
    return build(cfg.logger, "logger")


def tune_switch(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, TUNE_SWITCH, default=False))


def tuning_requested(cfg: DictConfig) -> bool:
    """``tune.enabled=true`` for a method with hyper-parameters (its class declares
    ``tuned_params``; for one without, Identity, the switch is a no-op, noted in the log and
    results.json). Without the switch no method class (torch) is imported."""
    if not tune_switch(cfg):
        return False
    from nnn.methods import method_class

    return bool(method_class(method_name(cfg)).tuned_params)


def _call_repr(name: str, params: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def method_description(cfg: DictConfig) -> dict[str, Any]:
    """{"name": "NNN", "params": {...}, "repr": "NNN(k=16, alpha=0.75, ...)"} from cfg.method
    (``used_parameters`` replaces the repr by what tuning chose)."""
    params = {k: v for k, v in method_params(cfg).items() if k not in ("_target_", "device")}
    name = method_name(cfg)
    return {"name": name, "params": params, "repr": _call_repr(name, params)}


def used_parameters(description: dict[str, Any], tuned: dict) -> dict[str, Any]:
    """``description`` (``method_description``) with what tuning chose: ``per_direction``
    {direction: {"params", "repr"}} holds the parameters each direction's method was built
    with, and ``repr`` lists them ("t2i: NNN(k=64, ...); i2t: NNN(k=128, ...)"); ``params``
    stay as configured."""
    per_direction = {}
    for direction, result in tuned.items():
        estimator = result.estimator()
        name = type(estimator).__name__  # Identity when every beta was tuned to 0
        params = {**description["params"], **result.best} if name == description["name"] \
            else dict(result.best)
        per_direction[direction] = {"params": params, "repr": _call_repr(name, params)}
    return {**description, "per_direction": per_direction,
            "repr": "; ".join(f"{d}: {p['repr']}" for d, p in per_direction.items())}


def tuner_arguments(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(the tuner's method option, its keywords): ``tune.grid`` and the method's keywords that
    are not tuned (``nnn.tuning.tune(option, ..., **keywords)``)."""
    from nnn.methods import method_class

    cls = method_class(method_name(cfg))
    fixed = {k: v for k, v in method_params(cfg).items()
             if k != "_target_" and k not in cls.tuned_params}
    return cls.option, {**(OmegaConf.to_container(cfg.tune.grid, resolve=True) or {}), **fixed}


def analysis_nnn_keywords(cfg: DictConfig) -> dict[str, Any]:
    """NNN's keywords for the alpha x k analysis: the run's own (backend, index, batch sizes,
    ...) when its method is NNN, else only the device."""
    from nnn.methods import NNN

    if method_name(cfg) != NNN.__name__:
        return {"device": cfg.device}
    return {k: v for k, v in method_params(cfg).items()
            if k not in ("_target_", "k_max", *NNN.tuned_params)}


def _check_directions(names) -> None:
    from nnn.task import DIRECTIONS

    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"eval.directions={list(names)}: each must be one of {list(DIRECTIONS)}")


def _check_seed(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}={value!r}: a seed must be an integer >= 0, e.g. {key}=0")


def _check_objective(cfg: DictConfig) -> None:
    """``objective`` names a metric the run measures (``nnn.evaluation.objective``) in a direction
    of ``eval.directions``: a recall ``DIRECTION/R@k`` (k >= 1) on the tuning part when there is
    one, else a metric of the test split (``nnn.results.metric_names``)."""
    metric, directions = str(cfg.objective), list(cfg.eval.directions)
    direction, _, name = metric.partition("/")
    if has_tuning_part(cfg):
        k = name[2:]
        if direction not in directions or not name.startswith("R@") or not k.isdigit() \
                or int(k) < 1:
            raise ValueError(f"objective={metric!r}: on the tuning part the objective is a "
                             f"recall DIRECTION/R@k with k >= 1 and a direction of "
                             f"eval.directions {directions}, e.g. t2i/R@1 or i2t/R@5")
        return
    names = metric_names(cfg.eval.ks)
    if direction not in directions or name not in names:
        raise ValueError(f"objective={metric!r}: use DIRECTION/METRIC with a direction of "
                         f"eval.directions {directions} and a metric of {names}, e.g. t2i/R@1")


def _check_tune_grid(cfg: DictConfig) -> None:
    """Each key of ``tune.grid`` is a grid of the method's tuner (``nnn.tuning.grid_keywords``)."""
    from nnn.tuning import grid_keywords

    if not tuning_requested(cfg):
        return
    grids = grid_keywords(method_name(cfg))
    bad = [k for k in (cfg.tune.grid or {}) if k not in grids]
    if bad:
        raise ValueError(f"tune.grid.{bad[0]}: the tuner of {method_name(cfg)} has no grid "
                         f"{bad[0]!r}; its grids are {', '.join(grids)} (e.g. "
                         f"+tune.grid.{grids[0]}=[...]); fixed settings belong in method.*")


def _check_extraction(cfg: DictConfig) -> None:
    """``extract=ddp`` (Lightning on GPUs) needs CUDA where a model may encode."""
    import torch

    lightning = OmegaConf.select(cfg, "extract.lightning")
    if not lightning or "_target_" not in (cfg.get("model") or {}):
        return
    if lightning.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"extract=ddp encodes on CUDA GPUs (extract.lightning.accelerator="
                         f"{lightning.accelerator}), but this machine has none: use the default "
                         "extract (drop extract=ddp; it encodes in this process, on device=cpu "
                         "here), or run on a machine with GPUs")
    _check_ddp_precision(cfg.model, lightning.get("accelerator", "auto"))


def _check_ddp_precision(model: DictConfig, accelerator: str) -> None:
    """The check each DDP rank makes (nnn.embed.lightning), made before any data loads: the
    precision the cache key names (from ``model.device``) must be the one that runs on the
    accelerator's devices (fp16 runs as fp32 on the CPU)."""
    import torch

    from nnn._arrays import resolve_device
    from nnn.encoders.torch_model import effective_precision

    precision = model.get("precision")
    if precision is None:
        return
    kind = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}.get(
        str(accelerator), "cuda" if torch.cuda.is_available() else "cpu")
    keyed_on = resolve_device(model.get("device"))
    key = effective_precision(precision, keyed_on, warn=False)
    runs = effective_precision(precision, torch.device(kind), warn=False)
    if key != runs:
        raise ValueError(f"extract.lightning.accelerator={accelerator} runs model.precision="
                         f"{precision} as {runs}, but the cache key is made for device="
                         f"{model.get('device')} ({keyed_on.type}), where it runs as {key}: set "
                         f"device={kind} to match the accelerator, or model.precision=fp32")


def _check_plain(cfg: DictConfig) -> None:
    """The checks that import no torch, so that such a mistake answers at once: missing values,
    seeds, directions, a selecting sweeper without a tuning part, the logger's settings (it is
    only built: no run is started) and the objective (unless tuning, which imports torch)."""
    from nnn.hydra_callbacks import check_tuning_part

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{', '.join(missing)} must be set (??? in the config): add "
                         f"{missing[0]}=VALUE to the command line")
    _check_seed("seed", cfg.seed)
    _check_seed("reference.seed", cfg.reference.seed)
    for key in ("dataset.seed", "reference.dataset.seed"):  # the datasets that have one
        if OmegaConf.select(cfg, key, default=None) is not None:
            _check_seed(key, OmegaConf.select(cfg, key))
    _check_directions(cfg.eval.directions)
    check_tuning_part(selecting_sweeper(), cfg.reference.tuning_size)
    build_logger(cfg)
    _check_objective(cfg)


def check_config(cfg: DictConfig) -> EvalSettings:
    """Config mistakes that need no data: first those that need no torch (``_check_plain``),
    then the method's parameters, the tuner's grids, DDP without GPUs or with a precision the
    cache key would not name, and ``cfg.eval``; returns the evaluation's settings."""
    _check_plain(cfg)
    from nnn.evaluation import EvalSettings  # torch: after the checks that need none

    build_method(cfg)
    _check_tune_grid(cfg)
    _check_extraction(cfg)
    e = cfg.eval
    return EvalSettings(ks=tuple(e.ks), n_boot=e.n_boot, ci_level=e.ci_level,
                        resample=e.get("resample", "image"), batch_size=e.batch_size,
                        hubness_k=e.hubness_k, seed=cfg.seed, device=cfg.device)
