"""The experiment pipeline; the only module that reads the Hydra config.

``run(cfg)``: embeddings -> reference set -> method -> metrics, in both directions, always beside
the uncorrected baseline, then results files, plots and the experiment logger:

1. *load*: the dataset (``cfg.dataset``) gives embeddings itself (``model=none``: synthetic,
   precomputed), or raw images and captions that ``cfg.model`` encodes through the embedding
   cache (*embed*; only the evaluation split and the drawn reference/tuning images are encoded).
2. The reference set (and an optional tuning part) is drawn from the training split
   (``cfg.reference``), disjoint from the evaluation split; the references may come from
   another dataset's training split (``reference.dataset``, out-of-distribution references).
3. Optionally (``cfg.tune.enabled``) the method's hyper-parameters are chosen per direction on
   the tuning part (``nnn.tuning``); the test split is never used for it. The tuning part is
   ``reference.tuning_size`` images; ``auto`` (default) holds out as many as the test split
   (fewer if the references would not fit) when tuning or a selecting sweeper needs it.
4. Per direction (``nnn.task.RetrievalTask``: t2i: captions retrieve test images, the banks are
   reference captions (query bank) and reference images (gallery bank); i2t: the mirror image),
   the baseline (plain dot product) and the method are fitted (*fit*) and evaluated (*evaluate*):
   R@k with bootstrap CIs, median/mean rank, hubness statistics of N_k over the gallery.
   Optional analyses of the evaluation split (``cfg.analysis``, never used to choose anything):
   NNN's R@1 over the alpha x k grid, the biggest hubs before/after.
5. ``results.json`` / ``results.csv``, ``hubness.png`` and ``hubness_counts.npz`` (plus
   ``alpha_k.png/csv``, ``top_hubs.csv``, ``hub_occupancy.csv`` when computed) are written to the
   output directory *before* anything is sent to the logger, so a logging failure never loses
   them. The logger's run is started in the background when the run begins (W&B's import and
   start overlap the work) and finished at the end, as failed if the run fails. A failure of the
   run itself is recorded in ``results.json`` (status "failed") before it propagates.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from nnn._timing import timed
# also registers ${nnn.repo_root:}
from nnn.config_dir import CONFIG_DIR, TUNE_SWITCH, translate_overrides
from nnn.data.base import EmbeddingSet
from nnn.loggers import sweep_group
from nnn.reporting import create_logger, flatten, log_to_logger, write_run_files
from nnn.results import format_table, is_ci_key, write_results

if TYPE_CHECKING:
    from nnn.evaluation import EvalSettings
    from nnn.task import RetrievalTask

# torch, scipy and matplotlib (methods, metrics, tuning, ablations, plots) are imported where
# they are used, so that composing and checking a config stays fast (``run.py --help`` needs none)

log = logging.getLogger(__name__)

#: the Hydra choice key of the reference set's own dataset (``dataset@reference.dataset=coco``)
REFERENCE_DATASET_CHOICE = "dataset@reference.dataset"


def _hydra() -> DictConfig | None:
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


# -- data ----------------------------------------------------------------------------------------
def _encode(cfg: DictConfig, parts: dict[str, tuple[Any, str, Any, Any]],
            timings: dict[str, float]) -> dict[str, EmbeddingSet]:
    """Embed ``parts`` ({key: (raw dataset, split name, image rows or None, subset
    description)}) with ``cfg.model`` through the embedding cache (``nnn.embed``)."""
    from nnn.embed import embed_dataset_split  # encoders and image IO: only for raw datasets

    with timed(timings, "load"):
        encoder = instantiate(cfg.model)  # not loaded: the extraction loads it on a cache miss
        cache = instantiate(cfg.cache)
    options = OmegaConf.to_container(cfg.extract, resolve=True)
    with timed(timings, "embed"):
        return {key: embed_dataset_split(encoder, dataset, name, cache, rows=rows, subset=subset,
                                         **options)
                for key, (dataset, name, rows, subset) in parts.items()}


def reference_dataset_config(cfg: DictConfig) -> DictConfig | None:
    """The config of the dataset the references come from (``reference.dataset``, chosen with
    ``dataset@reference.dataset=NAME``), or None when they come from the evaluation dataset:
    ``reference.dataset`` is null, the same option as ``dataset``, or an identical config."""
    ref = cfg.reference.get("dataset")
    if ref is None:
        return None
    hc = _hydra()
    if hc is not None:
        choices = hc.runtime.choices
        if choices.get(REFERENCE_DATASET_CHOICE) == choices.get("dataset"):
            return None
    return None if ref == cfg.dataset else ref


def _reference_dataset_name(cfg: DictConfig, dataset_name: str) -> str:
    """``data.reference_dataset`` of the results: the option name (or class) of the reference
    dataset; ``dataset_name`` (the evaluation dataset's) when the references come from it."""
    ref = reference_dataset_config(cfg)
    if ref is None:
        return dataset_name
    hc = _hydra()
    choice = hc.runtime.choices.get(REFERENCE_DATASET_CHOICE) if hc is not None else None
    return choice or str(ref.get("_target_", "?")).rsplit(".", 1)[-1]


def load_sets(cfg: DictConfig, timings: dict[str, float], info: dict[str, Any] | None = None
              ) -> tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet | None]:
    """(evaluation split, reference set, tuning part or None) as ``EmbeddingSet``s, drawn as
    ``nnn.data.assemble`` describes from ``cfg.dataset``, ``cfg.reference`` (and
    ``reference.dataset``) and embedded with ``cfg.model`` when the dataset is raw.

    The tuning part's size is ``reference.tuning_size`` (``nnn.data.assemble.tuning_size``); how
    it was chosen goes to ``info["tuning_part"]`` when ``info`` is given.
    """
    from nnn.data.assemble import draw_sets, load_splits, n_images, tuning_size

    r = cfg.reference
    ref_cfg = reference_dataset_config(cfg)
    with timed(timings, "load"), _shared_data_hint(cfg):
        splits = load_splits(instantiate(cfg.dataset), eval_split=cfg.eval.split, source=r.source,
                             ref_dataset=None if ref_cfg is None else instantiate(ref_cfg))
    n_tuning, how = tuning_size(r.tuning_size, n_images(splits.test), n_images(splits.source),
                                r.fraction, auto=_needs_tuning_part(cfg))
    if info is not None:
        info["tuning_part"] = how
    has_model = "_target_" in (cfg.get("model") or {})
    return draw_sets(splits, fraction=r.fraction, seed=r.seed, n_tuning=n_tuning,
                     encode=(lambda parts: _encode(cfg, parts, timings)) if has_model else None)


@contextmanager
def _shared_data_hint(cfg: DictConfig):
    """A missing file under ``paths.shared_data`` (the ready-made embeddings) raises
    ``MissingResourceError`` that also says where that folder comes from."""
    from nnn.errors import MissingResourceError

    try:
        yield
    except MissingResourceError as err:
        shared = OmegaConf.select(cfg, "paths.shared_data", default=None)
        if not shared or str(Path(shared)) not in str(err):
            raise
        raise MissingResourceError(f"{err} (paths.shared_data={shared}: set NNN_SHARED_DATA to "
                                   "the folder holding the ready-made embeddings)") from err


def _selecting_sweeper() -> str | None:
    """The sweeper's class when this job belongs to a sweep whose sweeper *selects* parameters
    by the objective (Optuna, Nevergrad, ...: any but Hydra's grid, ``BasicSweeper``)."""
    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    target = str(OmegaConf.select(hc, "sweeper._target_", default="") or "")
    return None if not target or target.endswith(".BasicSweeper") else target


def _needs_tuning_part(cfg: DictConfig) -> bool:
    """Whether ``reference.tuning_size=auto`` holds out a tuning part: the method is tuned, or
    a selecting sweeper needs an objective that is not measured on test."""
    return _tuning_requested(cfg) or _selecting_sweeper() is not None


# -- evaluation ----------------------------------------------------------------------------------
def _method_name(cfg: DictConfig) -> str:
    return str(cfg.method.get("_target_", "?")).rsplit(".", 1)[-1]


def method_params(cfg: DictConfig) -> dict[str, Any]:
    """cfg.method as constructor keywords (with ``_target_``)."""
    return OmegaConf.to_container(cfg.method, resolve=True)


def build_method(cfg: DictConfig):
    return instantiate(method_params(cfg))


def _tune_switch(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, TUNE_SWITCH, default=False))


def _tuning_requested(cfg: DictConfig) -> bool:
    """``tune.enabled=true`` for a method with hyper-parameters (its class declares
    ``tuned_params``; for one without, Identity, the switch is a no-op, noted in the log and
    results.json)."""
    from nnn.methods import method_class

    return _tune_switch(cfg) and bool(method_class(_method_name(cfg)).tuned_params)


def _call_repr(name: str, params: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def _method_description(cfg: DictConfig) -> dict[str, Any]:
    """{"name": "NNN", "params": {...}, "repr": "NNN(k=16, alpha=0.75, ...)"} from cfg.method
    (``_used_parameters`` replaces the repr by what tuning chose)."""
    params = {k: v for k, v in method_params(cfg).items() if k not in ("_target_", "device")}
    name = _method_name(cfg)
    return {"name": name, "params": params, "repr": _call_repr(name, params)}


def _used_parameters(description: dict[str, Any], tuned: dict) -> dict[str, Any]:
    """``description`` (``_method_description``) with what tuning chose: ``per_direction``
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


def _tune(cfg: DictConfig, tuning: EmbeddingSet | None, reference: EmbeddingSet,
          timings: dict[str, float]) -> dict:
    """Per direction, the ``TuningResult`` of the method's grid on the tuning part."""
    from nnn.data.assemble import TUNING_AUTO

    if tuning is None:
        raise ValueError(f"{TUNE_SWITCH}=true needs a tuning part, but reference.tuning_size="
                         f"{cfg.reference.tuning_size}: use reference.tuning_size={TUNING_AUTO} "
                         "(the paper's protocol), 'test' or a number of images")
    from nnn.methods import method_class
    from nnn.tuning import tune

    cls = method_class(_method_name(cfg))
    fixed = {k: v for k, v in method_params(cfg).items()
             if k != "_target_" and k not in cls.tuned_params}
    grid = OmegaConf.to_container(cfg.tune.grid, resolve=True) or {}
    out = {}
    for direction in cfg.eval.directions:
        with timed(timings, f"{direction}/tune"):
            out[direction] = tune(cls.option, tuning, reference, direction,
                                  batch_size=cfg.eval.batch_size, **grid, **fixed)
        log.info("%s: tuned %s on %d tuning images: %s (R@1 %.2f)", direction, cls.option,
                 len(tuning.image), out[direction].best, out[direction].best_score)
    return out


def _alpha_k_analysis(cfg: DictConfig, task: RetrievalTask,
                      timings: dict[str, float]) -> dict[str, Any]:
    """``nnn.ablations.alpha_k_analysis`` with ``cfg.analysis``'s axes and, when the run's
    method is NNN, its backend, index and batch sizes."""
    from nnn.ablations import alpha_k_analysis
    from nnn.methods import NNN

    nnn_kwargs = {"device": cfg.device}
    if _method_name(cfg) == NNN.__name__:
        nnn_kwargs = {k: v for k, v in method_params(cfg).items()
                      if k not in ("_target_", "k_max", *NNN.tuned_params)}
    with timed(timings, f"{task.direction}/analysis_alpha_k"):
        return alpha_k_analysis(task, alphas=cfg.analysis.alphas, ks=cfg.analysis.ks,
                                split=cfg.eval.split, batch_size=cfg.eval.batch_size, **nnn_kwargs)


def _check_directions(names) -> None:
    from nnn.task import DIRECTIONS

    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"eval.directions={list(names)}: each must be one of {list(DIRECTIONS)}")


def _check_before_loading(cfg: DictConfig) -> EvalSettings:
    """Config mistakes that need no data (missing values, directions, a selecting sweeper
    without a tuning part, the method's parameters, ``cfg.eval``); returns the evaluation's
    settings."""
    from nnn.data.assemble import TUNING_AUTO
    from nnn.evaluation import EvalSettings

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{', '.join(missing)} must be set (??? in the config): add "
                         f"{missing[0]}=VALUE to the command line")
    _check_directions(cfg.eval.directions)
    sweeper = _selecting_sweeper()
    if sweeper is not None and cfg.reference.tuning_size in (0, "0"):
        raise ValueError(f"the sweeper {sweeper} chooses parameters by the objective, which must "
                         "not be measured on the test split, but reference.tuning_size=0: use "
                         f"reference.tuning_size={TUNING_AUTO} (default), 'test' or a number")
    build_method(cfg)
    e = cfg.eval
    return EvalSettings(ks=tuple(e.ks), n_boot=e.n_boot, ci_level=e.ci_level,
                        resample=e.get("resample", "image"), batch_size=e.batch_size,
                        hubness_k=e.hubness_k, seed=cfg.seed, device=cfg.device)


def _data_summary(cfg: DictConfig, results: dict[str, Any], test: EmbeddingSet,
                  reference: EmbeddingSet, tuning: EmbeddingSet | None, tuning_part: str
                  ) -> dict[str, Any]:
    """``results["data"]``: the dataset, its sizes, the reference and tuning parts."""
    dataset = results["choices"].get("dataset") or test.meta.get("source", test.name)
    return {"dataset": dataset, "dim": test.dim, "test_images": len(test.image),
            "test_captions": len(test.text), "reference_images": len(reference.image),
            "reference_captions": len(reference.text),
            "tuning_images": 0 if tuning is None else len(tuning.image),
            "tuning_part": tuning_part,
            "reference_dataset": _reference_dataset_name(cfg, dataset)}


def _tune_if_asked(cfg: DictConfig, results: dict[str, Any], tuning: EmbeddingSet | None,
                   reference: EmbeddingSet) -> dict:
    """Per direction, the ``TuningResult`` when tuning is requested ({} otherwise); records
    what was tuned and which parameters each direction uses in ``results``."""
    tuned = _tune(cfg, tuning, reference, results["timings_s"]) if _tuning_requested(cfg) else {}
    results["tuning"] = {d: r.to_dict() for d, r in tuned.items()}
    if tuned:
        results["method"] = _used_parameters(results["method"], tuned)
    elif _tune_switch(cfg):
        note = (f"{results['method']['name']} has no hyper-parameters: {TUNE_SWITCH}=true "
                "changes nothing")
        log.warning("%s", note)
        results["method"]["note"] = note
    return tuned


def _evaluate_directions(cfg: DictConfig, results: dict[str, Any], settings: EvalSettings,
                         test: EmbeddingSet, reference: EmbeddingSet, make_method
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Baseline and method in each direction (``nnn.evaluation.compare``):
    ``results["metrics"]`` and the alpha x k analysis; returns N_k counts per direction
    (baseline, method)."""
    from nnn.evaluation import compare, deltas
    from nnn.task import RetrievalTask

    base_m, meth_m, counts, delta_ci = {}, {}, {}, {}
    k0 = settings.ks[0]
    for direction in cfg.eval.directions:
        task = RetrievalTask.from_sets(test, reference, direction)
        c = compare(task, make_method(direction), settings, results["timings_s"])
        base_m.update(c.baseline)
        meth_m.update(c.method)
        delta_ci.update(c.delta_ci)
        counts[direction] = c.counts
        if cfg.analysis.alpha_k:
            results["analysis"].setdefault("alpha_k", {})[direction] = \
                _alpha_k_analysis(cfg, task, results["timings_s"])
        log.info("%s R@%d: baseline %.2f -> %s %.2f", direction, k0,
                 c.baseline[f"{direction}/R@{k0}"], results["method"]["name"],
                 c.method[f"{direction}/R@{k0}"])
    results["metrics"] = {"baseline": base_m, "method": meth_m,
                          "delta": {**deltas(base_m, meth_m), **delta_ci}}
    return counts


def _evaluate_all(cfg: DictConfig, results: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill ``results`` (data, tuning, metrics, analysis, objective, timings); returns N_k counts
    per direction (baseline, method)."""
    from nnn.ablations import hub_analysis
    from nnn.evaluation import objective

    settings = _check_before_loading(cfg)  # before any data is loaded
    info: dict[str, Any] = {}
    test, reference, tuning = load_sets(cfg, results["timings_s"], info)
    results["data"] = _data_summary(cfg, results, test, reference, tuning,
                                    info.get("tuning_part", "none"))
    log.info("data: %s", results["data"])
    tuned = _tune_if_asked(cfg, results, tuning, reference)

    def make_method(direction: str):
        return tuned[direction].estimator() if direction in tuned else build_method(cfg)

    counts = _evaluate_directions(cfg, results, settings, test, reference, make_method)
    if cfg.analysis.top_hubs:  # the biggest hubs and how many items have each N_k, before/after
        results["analysis"]["hubs"] = hub_analysis(counts, cfg.analysis.top_hubs)
    with timed(results["timings_s"], "objective"):
        hc = _hydra()
        results["objective"] = objective(
            str(cfg.objective), results["metrics"]["method"], eval_split=cfg.eval.split,
            tuning=tuning, reference=reference, make_method=make_method, tuned=tuned,
            batch_size=cfg.eval.batch_size, multirun=hc is not None and hc.mode == RunMode.MULTIRUN)
    return counts


# -- the run -------------------------------------------------------------------------------------
def _new_results(cfg: DictConfig) -> dict[str, Any]:
    hc = _hydra()
    return {
        "status": "running", "error": None, "name": cfg.name,
        "overrides": list(hc.overrides.task) if hc is not None else [],
        "choices": dict(hc.runtime.choices) if hc is not None else {},
        "method": _method_description(cfg),
        "data": {}, "tuning": {}, "metrics": {}, "analysis": {}, "timings_s": {},
        "objective": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one experiment; returns the results dict (see ``nnn.results``) and writes it to
    ``output_dir`` (default: Hydra's output directory of the job)."""
    if OmegaConf.select(cfg, "extract.lightning"):
        from nnn.embed.lightning import is_global_zero

        if not is_global_zero():
            # a DDP rank > 0 (the launcher re-runs this command per device): it encodes its
            # share of the images and stops; rank 0 alone evaluates, writes results and logs
            load_sets(cfg, {})
            log.info("DDP extraction rank done; rank 0 evaluates, writes results and logs")
            return {"status": "extraction rank", "objective": None}
    if output_dir is None:
        hc = _hydra()
        if hc is None or OmegaConf.is_missing(hc.runtime, "output_dir"):
            raise ValueError("run() outside a Hydra job needs output_dir=")
        output_dir = hc.runtime.output_dir
    out = Path(output_dir)
    results = _new_results(cfg)
    logger = _start_logger(cfg, results, out)  # in the background: W&B's start overlaps the run
    import nnn.metrics  # noqa: F401  torch: imported here, outside the stage timings
    import nnn.tuning  # noqa: F401
    t0 = time.perf_counter()
    try:
        counts = _evaluate_all(cfg, results)
        results["status"] = "completed"
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        logger.finish(exit_code=1)  # the logger's run is marked failed; results.json says why
        raise
    finally:
        results["timings_s"]["total"] = time.perf_counter() - t0
        write_results(out, results)
    pngs, tables = write_run_files(results, counts, out, hubness_k=cfg.eval.hubness_k)
    log.info("results in %s\n%s", out, format_table(results))
    log_to_logger(logger, results, pngs, tables)
    return results


def _start_logger(cfg: DictConfig, results: dict[str, Any], out: Path):
    """``cfg.logger`` (``NullLogger`` if it cannot be created), its run started in the
    background with the run's config. Jobs of a sweep share a W&B group (``sweep_group``)."""
    logger = create_logger(lambda: instantiate(cfg.logger), out)
    hc = _hydra()
    group, name = cfg.name, cfg.name
    if hc is not None:
        name = hc.job.override_dirname or cfg.name
        if hc.mode == RunMode.MULTIRUN:
            group = sweep_group(cfg.name, hc.sweep.dir)
    logger.start(flatten(results["config"]), name=name, group=group, dir=out, background=True)
    return logger
