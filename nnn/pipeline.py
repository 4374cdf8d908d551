"""The experiment pipeline; the only module that reads the Hydra config.

``run(cfg)``: embeddings -> reference set -> method -> metrics, in both directions, always beside
the uncorrected baseline, then results files, plots and the experiment logger:

1. *load*: the dataset (``cfg.dataset``) gives embeddings itself (``model=none``: synthetic,
   precomputed), or raw images and captions that ``cfg.model`` encodes through the embedding
   cache (*embed*; only the evaluation split and the drawn reference/tuning images are encoded).
2. The reference set (and an optional tuning part) is drawn from the training split
   (``cfg.reference``), disjoint from the evaluation split; the references may come from
   another dataset's training split (``reference.dataset``, out-of-distribution references).
3. Optionally (``cfg.method.tune``) the method's hyper-parameters are chosen per direction on
   the tuning part (``nnn.tuning``); the test split is never used for it. The tuning part is
   ``reference.tuning_size`` images; ``auto`` (default) holds out as many as the test split
   (fewer if the references would not fit) when tuning or a selecting sweeper needs it.
4. Per direction (``nnn.tuning.RetrievalTask``: t2i: captions retrieve test images, the banks are
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

# also registers ${nnn.repo_root:}
from nnn.config_dir import CONFIG_DIR, TUNE_SWITCH, translate_overrides
from nnn.data.base import EmbeddingSet
from nnn.loggers import NullLogger, sweep_group
from nnn.results import (ALPHA_K_COLUMNS, CSV_COLUMNS, alpha_k_grids, alpha_k_rows, format_table,
                         is_ci_key, metric_rows, write_results, write_table_csv)

if TYPE_CHECKING:
    from nnn.task import RetrievalTask

# torch, scipy and matplotlib (methods, metrics, tuning, ablations, plots) are imported where
# they are used, so that composing and checking a config stays fast (``run.py --help`` needs none)

log = logging.getLogger(__name__)

HUBNESS_PNG = "hubness.png"
ALPHA_K_PNG = "alpha_k.png"
ALPHA_K_CSV = "alpha_k.csv"
TOP_HUBS_CSV = "top_hubs.csv"
HUB_OCCUPANCY_CSV = "hub_occupancy.csv"
TOP_HUBS_COLUMNS = ("direction", "rank", "item", "before", "after", "before_share", "after_share")
HUB_OCCUPANCY_COLUMNS = ("direction", "bin", "low", "high", "before", "after")
#: the Hydra choice key of the reference set's own dataset (``dataset@reference.dataset=coco``)
REFERENCE_DATASET_CHOICE = "dataset@reference.dataset"
#: reference.tuning_size: the paper's protocol when a tuning part is needed, else none
TUNING_AUTO = "auto"
#: results["objective"]["role"] of a sweep job whose objective is measured on the test split
OBJECTIVE_ANALYSIS = "analysis"


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


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
    description)}) with ``cfg.model`` through the embedding cache (``nnn.extract``)."""
    from nnn.extract import embed_dataset_split  # encoders and image IO: only for raw datasets

    with _timed(timings, "load"):
        encoder = instantiate(cfg.model)  # not loaded: the extraction loads it on a cache miss
        cache = instantiate(cfg.cache)
    options = OmegaConf.to_container(cfg.extract, resolve=True)
    with _timed(timings, "embed"):
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


def _splits(dataset, names: dict[str, str]) -> dict[str, Any]:
    """{key: split} for {key: split name} of one dataset (an embedding-level dataset generates or
    reads all its splits once)."""
    if not hasattr(dataset, "splits"):
        return {key: dataset.split(name) for key, name in names.items()}
    sets = dataset.splits()
    missing = sorted({n for n in names.values() if n not in sets})
    if missing:
        raise ValueError(f"dataset {type(dataset).__name__} has splits {sorted(sets)}, "
                         f"not {missing}; set eval.split / reference.source to one of them")
    return {key: sets[name] for key, name in names.items()}


def load_sets(cfg: DictConfig, timings: dict[str, float], info: dict[str, Any] | None = None
              ) -> tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet | None]:
    """(evaluation split, reference set, tuning part or None) as ``EmbeddingSet``s.

    The tuning part's size is ``reference.tuning_size`` (``_tuning_size``); how it was chosen
    goes to ``info["tuning_part"]`` when ``info`` is given.

    The reference set comes from ``reference.source`` of the evaluation dataset, or of
    ``reference.dataset`` when that names another one (out-of-distribution references, e.g.
    COCO captions for Flickr30k). The tuning part always comes from the evaluation dataset's
    ``reference.source`` split (the same images either way), so hyper-parameters are chosen for
    the evaluation distribution, as in the paper.
    """
    from nnn.data.splits import reference_and_tuning_sets, reference_and_tuning_split

    r = cfg.reference
    has_model = "_target_" in (cfg.get("model") or {})
    ref_cfg = reference_dataset_config(cfg)
    if ref_cfg is None and r.source == cfg.eval.split:
        raise ValueError(f"reference.source={r.source!r} is the evaluation split (eval.split); "
                         "references and the tuning part must come from another split, e.g. "
                         "reference.source=train")
    with _timed(timings, "load"), _shared_data_hint(cfg):
        dataset = instantiate(cfg.dataset)
        got = _splits(dataset, {"test": cfg.eval.split, "source": r.source})
        test, source = got["test"], got["source"]
        ref_dataset, ref_source = dataset, source
        if ref_cfg is not None:
            ref_dataset = instantiate(ref_cfg)
            ref_source = _splits(ref_dataset, {"source": r.source})["source"]
    if isinstance(test, EmbeddingSet) != isinstance(ref_source, EmbeddingSet):
        raise ValueError(f"the evaluation dataset {type(dataset).__name__} and the reference "
                         f"dataset {type(ref_dataset).__name__} must both hold embeddings "
                         "(model=none) or both raw images and captions (embedded by one model)")
    n_test = len(test.image) if isinstance(test, EmbeddingSet) else test.n_images
    n_source = len(source.image) if isinstance(source, EmbeddingSet) else source.n_images
    n_tuning, how = _tuning_size(r.tuning_size, n_test, n_source, r.fraction,
                                 auto=_needs_tuning_part(cfg))
    if info is not None:
        info["tuning_part"] = how
    # in-distribution: one seeded draw gives disjoint reference and tuning parts; otherwise the
    # references are drawn from the other dataset and the tuning part as in-distribution
    n_ref_tuning = n_tuning if ref_cfg is None else 0
    if isinstance(test, EmbeddingSet):
        if has_model:
            raise ValueError(f"dataset {type(dataset).__name__} already holds embeddings; use "
                             "model=none with it, or a raw-image dataset (coco, flickr30k) with "
                             "an encoder")
        reference, tuning = reference_and_tuning_sets(ref_source, fraction=r.fraction,
                                                      tuning_size=n_ref_tuning, seed=r.seed)
        if ref_cfg is not None and n_tuning:
            _, tuning = reference_and_tuning_sets(source, fraction=r.fraction,
                                                  tuning_size=n_tuning, seed=r.seed)
        return test, reference, tuning
    if not has_model:
        raise ValueError(f"dataset {type(dataset).__name__} holds raw images and captions; "
                         "choose an encoder to embed them, e.g. model=clip")
    ref_rows, tune_rows = reference_and_tuning_split(ref_source.n_images, fraction=r.fraction,
                                                     tuning_size=n_ref_tuning, seed=r.seed)
    if ref_cfg is not None and n_tuning:
        _, tune_rows = reference_and_tuning_split(source.n_images, fraction=r.fraction,
                                                  tuning_size=n_tuning, seed=r.seed)
    subset = {"fraction": r.fraction, "seed": r.seed}
    parts = {"test": (dataset, cfg.eval.split, None, None),
             "reference": (ref_dataset, r.source, ref_rows,
                           {"part": "reference", "tuning_size": n_ref_tuning, **subset})}
    if len(tune_rows):
        parts["tuning"] = (dataset, r.source, tune_rows,
                           {"part": "tuning", "tuning_size": n_tuning, **subset})
    sets = _encode(cfg, parts, timings)
    return sets["test"], sets["reference"], sets.get("tuning")


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


def _tuning_size(size, n_test_images: int, n_source_images: int, fraction: float, *,
                 auto: bool) -> tuple[int, str]:
    """(images, how they were chosen) for ``reference.tuning_size``: an image count, "test" for
    the test split's size, or "auto": when ``auto`` (tuning requested, or a selecting sweeper)
    the paper's protocol, as many as the test split but at most what the references
    (``fraction`` of the ``n_source_images``) leave, else none."""
    if size == TUNING_AUTO:
        if not auto:
            return 0, "none"
        room = n_source_images - int(round(fraction * n_source_images))
        if room < 1:
            raise ValueError(f"no images are left for a tuning part: the references take "
                             f"reference.fraction={fraction} of the {n_source_images} training "
                             "images; lower reference.fraction or set reference.tuning_size")
        if room < n_test_images:
            note = (f"{room} images (auto: the test split's {n_test_images} do not fit beside "
                    f"the references, reference.fraction={fraction} of {n_source_images})")
            log.warning("tuning part shrunk to %s", note)
            return room, note
        return n_test_images, f"{n_test_images} images (auto: as many as the test split)"
    if size == "test":
        return n_test_images, f"{n_test_images} images (reference.tuning_size=test)"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"reference.tuning_size must be an integer >= 0, 'test' or "
                         f"'{TUNING_AUTO}', got {size!r}")
    return size, f"{size} images (reference.tuning_size={size})" if size else "none"


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
def _bootstrap_groups(task: RetrievalTask, cfg: DictConfig) -> np.ndarray | None:
    """The bootstrap's resampling units (``eval.resample``): "image" resamples text->image
    captions by their image (all 5 together); "query" (and image->text) resamples queries."""
    how = cfg.eval.get("resample", "image")
    if how not in ("image", "query"):
        raise ValueError(f"eval.resample={how!r}: use image (resample images with all their "
                         "captions) or query (resample queries independently)")
    return task.caption_to_image if how == "image" and task.direction == "t2i" else None


def _evaluate(task: RetrievalTask, method, cfg: DictConfig, timings: dict[str, float],
              tag: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Fit ``method`` on one direction; returns (flat metrics ``dir/...``, N_k counts (n_g,),
    ranks (n_q,))."""
    from nnn.metrics import hubness_stats, k_occurrence, rank_summary

    e = cfg.eval
    with _timed(timings, f"{task.direction}/fit{tag}"):
        task.fit(method)
    with _timed(timings, f"{task.direction}/evaluate{tag}"):
        ranks = task.ranks(method, batch_size=e.batch_size)
        summary = rank_summary(ranks, ks=list(e.ks), groups=_bootstrap_groups(task, cfg),
                               n_boot=e.n_boot, seed=cfg.seed, level=e.ci_level)
        counts = k_occurrence(method, task.queries, k=e.hubness_k, batch_size=e.batch_size)
        summary.update({f"hubness/{k}": v
                        for k, v in hubness_stats(counts, k=e.hubness_k).items()})
    return {f"{task.direction}/{k}": v for k, v in summary.items()}, counts, ranks


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
        with _timed(timings, f"{direction}/tune"):
            out[direction] = tune(cls.option, tuning, reference, direction,
                                  batch_size=cfg.eval.batch_size, **grid, **fixed)
        log.info("%s: tuned %s on %d tuning images: %s (R@1 %.2f)", direction, cls.option,
                 len(tuning.image), out[direction].best, out[direction].best_score)
    return out


def _objective(cfg: DictConfig, test_metrics: dict[str, float], tuning: EmbeddingSet | None,
               reference: EmbeddingSet, make_method, tuned: dict) -> dict[str, Any]:
    """The metric returned to a sweeper: on the tuning part when there is one, else on test."""
    from nnn.metrics import recall_at_k
    from nnn.task import DIRECTIONS, RetrievalTask

    metric = str(cfg.objective)
    direction, _, name = metric.partition("/")
    if tuning is None:
        if metric not in test_metrics:
            raise ValueError(f"objective={metric!r} is not among the metrics "
                             f"{sorted(k for k in test_metrics if not is_ci_key(k))}")
        out = {"metric": metric, "split": cfg.eval.split, "value": test_metrics[metric]}
        hc = _hydra()
        if hc is not None and hc.mode == RunMode.MULTIRUN:
            # a grid over the test split describes, it must not choose: labelled, and said once
            # per sweep with its summary (nnn.hydra_callbacks)
            out["role"] = OBJECTIVE_ANALYSIS
        return out
    if direction not in DIRECTIONS or not name.startswith("R@") or not name[2:].isdigit():
        raise ValueError(f"objective={metric!r}: on the tuning part the objective is a recall, "
                         "e.g. t2i/R@1 or i2t/R@5")
    if name == "R@1" and direction in tuned:
        value = tuned[direction].best_score
    else:
        task = RetrievalTask.from_sets(tuning, reference, direction)
        ranks = task.ranks(task.fit(make_method(direction)), batch_size=cfg.eval.batch_size)
        value = recall_at_k(ranks, [int(name[2:])])[name]
    return {"metric": metric, "split": "tuning", "value": value}


def _deltas(base: dict[str, float], meth: dict[str, float]) -> dict[str, float]:
    return {k: meth[k] - base[k] for k in base
            if not is_ci_key(k) and not k.endswith("n_queries") and k in meth}


def _alpha_k_analysis(cfg: DictConfig, task: RetrievalTask,
                      timings: dict[str, float]) -> dict[str, Any]:
    """NNN's R@1 over the alpha x k grid on the evaluation split (``analysis.alpha_k``), from one
    top-k table. An analysis of how R@1 depends on alpha and k: it chooses nothing (the run's
    parameters come from the tuning part or the config)."""
    from nnn.ablations import nnn_recall_grid
    from nnn.methods import NNN

    a, grid = cfg.analysis, NNN.tuning_grid
    alphas = list(grid["alphas"]) if a.alphas is None else list(a.alphas)
    ks = [k for k in grid["ks"] if k <= len(task.query_bank)] if a.ks is None else list(a.ks)
    nnn_kwargs = {"device": cfg.device}
    if _method_name(cfg) == NNN.__name__:  # the run's backend, index, batch sizes, ...
        nnn_kwargs = {k: v for k, v in method_params(cfg).items()
                      if k not in ("_target_", "k_max", *NNN.tuned_params)}
    with _timed(timings, f"{task.direction}/analysis_alpha_k"):
        table = nnn_recall_grid(task, alphas=alphas, ks=ks, batch_size=cfg.eval.batch_size,
                                **nnn_kwargs)
    return {"split": cfg.eval.split, "axes": {"alpha": alphas, "k": ks}, "table": table.tolist()}


def _check_directions(names) -> None:
    from nnn.task import DIRECTIONS

    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"eval.directions={list(names)}: each must be one of {list(DIRECTIONS)}")


def _evaluate_all(cfg: DictConfig, results: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill ``results`` (data, tuning, metrics, objective, timings); returns N_k counts per
    direction (baseline, method)."""
    from nnn.ablations import hub_occupancy, top_hubs
    from nnn.methods import Identity
    from nnn.metrics import paired_delta
    from nnn.task import RetrievalTask

    timings = results["timings_s"]
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # before any data is loaded
        raise ValueError(f"{', '.join(missing)} must be set (??? in the config): add "
                         f"{missing[0]}=VALUE to the command line")
    _check_directions(cfg.eval.directions)
    sweeper = _selecting_sweeper()
    if sweeper is not None and cfg.reference.tuning_size in (0, "0"):
        raise ValueError(f"the sweeper {sweeper} chooses parameters by the objective, which must "
                         "not be measured on the test split, but reference.tuning_size=0: use "
                         f"reference.tuning_size={TUNING_AUTO} (default), 'test' or a number")
    build_method(cfg)  # bad parameters fail here, before any data is loaded
    info: dict[str, Any] = {}
    test, reference, tuning = load_sets(cfg, timings, info)
    results["data"] = {
        "dataset": results["choices"].get("dataset") or test.meta.get("source", test.name),
        "dim": test.dim, "test_images": len(test.image), "test_captions": len(test.text),
        "reference_images": len(reference.image), "reference_captions": len(reference.text),
        "tuning_images": 0 if tuning is None else len(tuning.image),
        "tuning_part": info.get("tuning_part", "none")}
    results["data"]["reference_dataset"] = _reference_dataset_name(cfg, results["data"]["dataset"])
    log.info("data: %s", results["data"])
    tuned = _tune(cfg, tuning, reference, timings) if _tuning_requested(cfg) else {}
    results["tuning"] = {d: r.to_dict() for d, r in tuned.items()}
    if tuned:
        results["method"] = _used_parameters(results["method"], tuned)
    elif _tune_switch(cfg):
        note = (f"{results['method']['name']} has no hyper-parameters: method.tune=true "
                "changes nothing")
        log.warning("%s", note)
        results["method"]["note"] = note

    def make_method(direction: str):
        return tuned[direction].estimator() if direction in tuned else build_method(cfg)

    base_m, meth_m, counts, delta_ci = {}, {}, {}, {}
    k0 = cfg.eval.ks[0]
    for direction in cfg.eval.directions:
        task = RetrievalTask.from_sets(test, reference, direction)
        b, b_counts, b_ranks = _evaluate(task, Identity(device=cfg.device), cfg, timings,
                                         "/baseline")
        m, m_counts, m_ranks = _evaluate(task, make_method(direction), cfg, timings, "")
        base_m.update(b)
        meth_m.update(m)
        # the gain's CI from the same resamples as both CIs (paired): significant if it excludes 0
        paired = paired_delta(b_ranks, m_ranks, ks=list(cfg.eval.ks),
                              groups=_bootstrap_groups(task, cfg), n_boot=cfg.eval.n_boot,
                              seed=cfg.seed, level=cfg.eval.ci_level)
        delta_ci.update({f"{direction}/{k}": v for k, v in paired.items() if is_ci_key(k)})
        counts[direction] = (b_counts, m_counts)
        if cfg.analysis.alpha_k:
            results["analysis"].setdefault("alpha_k", {})[direction] = \
                _alpha_k_analysis(cfg, task, timings)
        log.info("%s R@%d: baseline %.2f -> %s %.2f", direction, k0, b[f"{direction}/R@{k0}"],
                 results["method"]["name"], m[f"{direction}/R@{k0}"])
    results["metrics"] = {"baseline": base_m, "method": meth_m,
                          "delta": {**_deltas(base_m, meth_m), **delta_ci}}
    if cfg.analysis.top_hubs:  # the biggest hubs and how many items have each N_k, before/after
        results["analysis"]["hubs"] = {
            d: {"top": top_hubs(b, a, top=min(int(cfg.analysis.top_hubs), len(b))),
                "occupancy": hub_occupancy(b, a)} for d, (b, a) in counts.items()}
    with _timed(timings, "objective"):
        results["objective"] = _objective(cfg, meth_m, tuning, reference, make_method, tuned)
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
        from nnn.extract_lightning import is_global_zero

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
    logger = start_logger(cfg, results, out)  # in the background: W&B's start overlaps the run
    import nnn.metrics  # noqa: F401  torch and scipy: imported here, outside the stage timings
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
    pngs, tables = _write_plots_and_tables(cfg, results, counts, out)
    log.info("results in %s\n%s", out, format_table(results))
    log_to_logger(logger, results, pngs, tables)
    return results


def _write_plots_and_tables(cfg: DictConfig, results: dict[str, Any],
                            counts: dict[str, tuple[np.ndarray, np.ndarray]], out: Path
                            ) -> tuple[dict[str, Path], dict[str, tuple]]:
    """The run's files beside results.json: N_k counts and their histogram, and where computed
    the alpha x k heat map and grid, the hub tables. Returns (PNGs, tables) for the logger."""
    from nnn.ablations import HUB_COUNTS_NPZ, write_hub_counts
    from nnn.plots import alpha_k_heatmap, hubness_histogram  # matplotlib: only when plotting

    write_hub_counts(out / HUB_COUNTS_NPZ, counts)
    pngs = {"hubness": hubness_histogram(counts, out / HUBNESS_PNG,
                                         labels=("baseline", results["method"]["name"]),
                                         k=cfg.eval.hubness_k)}
    tables = {}
    grids = alpha_k_grids(results)
    if grids:  # NNN's R@1 over (alpha, k): the tuning grid and/or the test-split analysis
        pngs["alpha_k"] = alpha_k_heatmap(grids, out / ALPHA_K_PNG)
        tables["alpha_k"] = (ALPHA_K_COLUMNS, alpha_k_rows(grids))
        write_table_csv(out / ALPHA_K_CSV, *tables["alpha_k"])
    hubs = results["analysis"].get("hubs") or {}
    for key, name, columns in (("top", TOP_HUBS_CSV, TOP_HUBS_COLUMNS),
                               ("occupancy", HUB_OCCUPANCY_CSV, HUB_OCCUPANCY_COLUMNS)):
        if hubs:
            rows = [{"direction": d, **row} for d, h in hubs.items() for row in h[key]]
            tables[Path(name).stem] = (columns, rows)
            write_table_csv(out / name, columns, rows)
    return pngs, tables


# -- experiment logging --------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def start_logger(cfg: DictConfig, results: dict[str, Any], out: Path):
    """``cfg.logger``, its run started in the background with the run's config (``NullLogger``
    if it cannot be created; never raises). Jobs of a sweep share a W&B group
    (``sweep_group``)."""
    try:
        logger = instantiate(cfg.logger)
    except Exception as err:
        log.warning("could not create the logger (%s: %s); results are in %s",
                    type(err).__name__, err, out)
        logger = NullLogger()
    hc = _hydra()
    group, name = cfg.name, cfg.name
    if hc is not None:
        name = hc.job.override_dirname or cfg.name
        if hc.mode == RunMode.MULTIRUN:
            group = sweep_group(cfg.name, hc.sweep.dir)
    logger.start(_flatten(results["config"]), name=name, group=group, dir=out, background=True)
    return logger


def log_to_logger(logger, results: dict[str, Any], pngs: dict[str, Path],
                  tables: dict[str, tuple] | None = None) -> None:
    """Send metrics, the results table, extra ``tables`` ({key: (columns, rows of dicts)}) and
    the plots to a started ``logger`` (``start_logger``), then finish it; never raises."""
    m = results["metrics"]
    metrics = dict(m["method"])
    metrics.update({f"baseline/{k}": v for k, v in m["baseline"].items()})
    metrics.update({f"delta/{k}": v for k, v in m["delta"].items()})
    metrics.update({f"time/{k}": v for k, v in results["timings_s"].items()})
    metrics["objective"] = objective_value(results)
    rows = [[r[c] for c in CSV_COLUMNS] for r in metric_rows(results)]
    with logger:
        logger.log_metrics(metrics)
        logger.log_table("results", CSV_COLUMNS, rows)
        for key, (columns, dict_rows) in (tables or {}).items():
            logger.log_table(key, columns, [[r.get(c) for c in columns] for r in dict_rows])
        for key, path in pngs.items():
            logger.log_image(key, path)


def objective_value(results: dict[str, Any]) -> float:
    """The number a sweeper optimises (``cfg.objective`` of the method; NaN if missing)."""
    value = (results.get("objective") or {}).get("value")
    return float("nan") if value is None else float(value)
