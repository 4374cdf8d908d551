"""The experiment pipeline; the only module that reads the Hydra config.

``run(cfg)``: embeddings -> reference set -> method -> metrics, in both directions, always beside
the uncorrected baseline, then results files, plots and the experiment logger:

1. *load*: the dataset (``cfg.dataset``) gives embeddings itself (``model=none``: synthetic,
   precomputed), or raw images and captions that ``cfg.model`` encodes through the embedding
   cache (*embed*; only the evaluation split and the drawn reference/tuning images are encoded).
2. The reference set (and an optional tuning part) is drawn from the training split
   (``cfg.reference``), disjoint from the evaluation split.
3. Optionally (``cfg.tune.enabled``) the method's hyper-parameters are chosen per direction on
   the tuning part (``nnn.tuning``); the test split is never used for it.
4. Per direction (``nnn.tuning.RetrievalTask``: t2i: captions retrieve test images, the banks are
   reference captions (query bank) and reference images (gallery bank); i2t: the mirror image),
   the baseline (plain dot product) and the method are fitted (*fit*) and evaluated (*evaluate*):
   R@k with bootstrap CIs, median/mean rank, hubness statistics of N_k over the gallery.
5. ``results.json`` / ``results.csv`` and ``hubness.png`` are written to the output directory
   *before* the logger runs, so a logging failure never loses them. A failure of the run itself
   is recorded in ``results.json`` (status "failed") before it propagates.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from nnn.data.base import EmbeddingSet
from nnn.data.splits import reference_and_tuning_sets, reference_and_tuning_split
from nnn.loggers import NullLogger
from nnn.methods import Identity
from nnn.metrics import hubness_stats, k_occurrence, rank_summary, recall_at_k
from nnn.plots import hubness_histogram
from nnn.results import CSV_COLUMNS, format_table, is_ci_key, metric_rows, write_results
from nnn.tuning import DIRECTIONS, RetrievalTask, canonical_method, tune

log = logging.getLogger(__name__)

#: the configs of a source checkout (conf/ beside the package)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
HUBNESS_PNG = "hubness.png"
#: constructor keys each tunable method's grid search sets (the rest of cfg.method is kept)
TUNED_KEYS = {"nnn": ("k", "alpha"), "qb_norm": ("beta",), "db_norm": ("beta_query", "beta_gallery"),
              "dn": ("lam",)}


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
        cfg = hydra_compose(config_name="config", overrides=list(overrides),
                            return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# -- data ----------------------------------------------------------------------------------------
def _encode(cfg: DictConfig, dataset, parts: dict[str, tuple[str, Any, Any]],
            timings: dict[str, float]) -> dict[str, EmbeddingSet]:
    """Embed ``parts`` ({key: (split name, image rows or None, subset description)}) of a raw
    dataset with ``cfg.model`` through the embedding cache (``nnn.extract``)."""
    from nnn.extract import embed_dataset_split  # encoders and image IO: only for raw datasets

    with _timed(timings, "load"):
        encoder = instantiate(cfg.model).load()
        cache = instantiate(cfg.cache)
    options = OmegaConf.to_container(cfg.extract, resolve=True)
    with _timed(timings, "embed"):
        return {key: embed_dataset_split(encoder, dataset, name, cache, rows=rows, subset=subset,
                                         **options)
                for key, (name, rows, subset) in parts.items()}


def load_sets(cfg: DictConfig, timings: dict[str, float]
              ) -> tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet | None]:
    """(evaluation split, reference set, tuning part or None) as ``EmbeddingSet``s."""
    r = cfg.reference
    has_model = "_target_" in (cfg.get("model") or {})
    with _timed(timings, "load"):
        dataset = instantiate(cfg.dataset)
        if hasattr(dataset, "splits"):  # embedding-level datasets: read or generate them once
            sets = dataset.splits()
            missing = [n for n in (cfg.eval.split, r.source) if n not in sets]
            if missing:
                raise ValueError(f"dataset {type(dataset).__name__} has splits {sorted(sets)}, "
                                 f"not {missing}; set eval.split / reference.source to one of them")
            test, source = sets[cfg.eval.split], sets[r.source]
        else:
            test, source = dataset.split(cfg.eval.split), dataset.split(r.source)
    n_test = len(test.image) if isinstance(test, EmbeddingSet) else test.n_images
    n_tuning = _tuning_size(r.tuning_size, n_test)
    if isinstance(test, EmbeddingSet):
        if has_model:
            raise ValueError(f"dataset {type(dataset).__name__} already holds embeddings; use "
                             "model=none with it, or a raw-image dataset (coco, flickr30k) with "
                             "an encoder")
        reference, tuning = reference_and_tuning_sets(source, fraction=r.fraction,
                                                      tuning_size=n_tuning, seed=r.seed)
        return test, reference, tuning
    if not has_model:
        raise ValueError(f"dataset {type(dataset).__name__} holds raw images and captions; "
                         "choose an encoder to embed them, e.g. model=clip")
    ref_rows, tune_rows = reference_and_tuning_split(source.n_images, fraction=r.fraction,
                                                     tuning_size=n_tuning, seed=r.seed)
    subset = {"fraction": r.fraction, "tuning_size": n_tuning, "seed": r.seed}
    parts = {"test": (cfg.eval.split, None, None),
             "reference": (r.source, ref_rows, {"part": "reference", **subset})}
    if len(tune_rows):
        parts["tuning"] = (r.source, tune_rows, {"part": "tuning", **subset})
    sets = _encode(cfg, dataset, parts, timings)
    return sets["test"], sets["reference"], sets.get("tuning")


def _tuning_size(size, n_test_images: int) -> int:
    """``reference.tuning_size``: an image count, or "test" for the test split's size."""
    if size == "test":
        return n_test_images
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"reference.tuning_size must be an integer >= 0 or 'test', got {size!r}")
    return size


# -- evaluation ----------------------------------------------------------------------------------
def _evaluate(task: RetrievalTask, method, cfg: DictConfig, timings: dict[str, float],
              tag: str) -> tuple[dict[str, float], np.ndarray]:
    """Fit ``method`` on one direction; returns (flat metrics ``dir/...``, N_k counts (n_g,))."""
    e = cfg.eval
    with _timed(timings, f"{task.direction}/fit{tag}"):
        task.fit(method)
    with _timed(timings, f"{task.direction}/evaluate{tag}"):
        summary = rank_summary(task.ranks(method, batch_size=e.batch_size), ks=list(e.ks),
                               n_boot=e.n_boot, seed=cfg.seed, level=e.ci_level)
        counts = k_occurrence(method, task.queries, k=e.hubness_k, batch_size=e.batch_size)
        summary.update({f"hubness/{k}": v for k, v in hubness_stats(counts).items()})
    return {f"{task.direction}/{k}": v for k, v in summary.items()}, counts


def _method_name(cfg: DictConfig) -> str:
    return str(cfg.method.get("_target_", "?")).rsplit(".", 1)[-1]


def _method_description(cfg: DictConfig) -> dict[str, Any]:
    """{"name": "NNN", "params": {...}, "repr": "NNN(k=16, alpha=0.75, ...)"} from cfg.method."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
              if k not in ("_target_", "device")}
    name = _method_name(cfg)
    return {"name": name, "params": params,
            "repr": f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"}


def _tune(cfg: DictConfig, tuning: EmbeddingSet | None, reference: EmbeddingSet,
          timings: dict[str, float]) -> dict:
    """Per direction, the ``TuningResult`` of the method's grid on the tuning part."""
    if tuning is None:
        raise ValueError("tune.enabled=true needs a tuning part: set reference.tuning_size "
                         "(e.g. 'test', the paper's protocol)")
    method = canonical_method(_method_name(cfg))
    fixed = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
             if k != "_target_" and k not in TUNED_KEYS[method]}
    grid = OmegaConf.to_container(cfg.tune.grid, resolve=True) or {}
    out = {}
    for direction in cfg.eval.directions:
        with _timed(timings, f"{direction}/tune"):
            out[direction] = tune(method, tuning, reference, direction,
                                  batch_size=cfg.eval.batch_size, **grid, **fixed)
        log.info("%s: tuned %s on %d tuning images: %s (R@1 %.2f)", direction, method,
                 len(tuning.image), out[direction].best, out[direction].best_score)
    return out


def _objective(cfg: DictConfig, test_metrics: dict[str, float], tuning: EmbeddingSet | None,
               reference: EmbeddingSet, make_method, tuned: dict) -> dict[str, Any]:
    """The metric returned to a sweeper: on the tuning part when there is one, else on test."""
    metric = str(cfg.objective)
    direction, _, name = metric.partition("/")
    if tuning is None:
        if metric not in test_metrics:
            raise ValueError(f"objective={metric!r} is not among the metrics "
                             f"{sorted(k for k in test_metrics if not is_ci_key(k))}")
        hc = _hydra()
        if hc is not None and hc.mode == RunMode.MULTIRUN:
            log.warning("the sweep's objective %s is measured on the test split; set "
                        "reference.tuning_size (e.g. 'test') to choose hyper-parameters on a "
                        "held-out part of the training split instead", metric)
        return {"metric": metric, "split": cfg.eval.split, "value": test_metrics[metric]}
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


def _check_directions(names) -> None:
    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"eval.directions={list(names)}: each must be one of {list(DIRECTIONS)}")


def _evaluate_all(cfg: DictConfig, results: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill ``results`` (data, tuning, metrics, objective, timings); returns N_k counts per
    direction (baseline, method)."""
    timings = results["timings_s"]
    _check_directions(cfg.eval.directions)
    instantiate(cfg.method)  # bad parameters fail here, before any data is loaded
    test, reference, tuning = load_sets(cfg, timings)
    results["data"] = {
        "dataset": results["choices"].get("dataset") or test.meta.get("source", test.name),
        "dim": test.dim, "test_images": len(test.image), "test_captions": len(test.text),
        "reference_images": len(reference.image), "reference_captions": len(reference.text),
        "tuning_images": 0 if tuning is None else len(tuning.image)}
    log.info("data: %s", results["data"])
    tuned = _tune(cfg, tuning, reference, timings) if cfg.tune.enabled else {}
    results["tuning"] = {d: r.to_dict() for d, r in tuned.items()}

    def make_method(direction: str):
        return tuned[direction].estimator() if direction in tuned else instantiate(cfg.method)

    base_m, meth_m, counts = {}, {}, {}
    k0 = cfg.eval.ks[0]
    for direction in cfg.eval.directions:
        task = RetrievalTask.from_sets(test, reference, direction)
        b, b_counts = _evaluate(task, Identity(device=cfg.device), cfg, timings, "/baseline")
        m, m_counts = _evaluate(task, make_method(direction), cfg, timings, "")
        base_m.update(b)
        meth_m.update(m)
        counts[direction] = (b_counts, m_counts)
        log.info("%s R@%d: baseline %.2f -> %s %.2f", direction, k0, b[f"{direction}/R@{k0}"],
                 results["method"]["name"], m[f"{direction}/R@{k0}"])
    results["metrics"] = {"baseline": base_m, "method": meth_m, "delta": _deltas(base_m, meth_m)}
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
        "data": {}, "tuning": {}, "metrics": {}, "timings_s": {}, "objective": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one experiment; returns the results dict (see ``nnn.results``) and writes it to
    ``output_dir`` (default: Hydra's output directory of the job)."""
    if output_dir is None:
        hc = _hydra()
        if hc is None or OmegaConf.is_missing(hc.runtime, "output_dir"):
            raise ValueError("run() outside a Hydra job needs output_dir=")
        output_dir = hc.runtime.output_dir
    out = Path(output_dir)
    results = _new_results(cfg)
    t0 = time.perf_counter()
    try:
        counts = _evaluate_all(cfg, results)
        results["status"] = "completed"
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        results["timings_s"]["total"] = time.perf_counter() - t0
        write_results(out, results)
    pngs = {"hubness": hubness_histogram(counts, out / HUBNESS_PNG,
                                         labels=("baseline", results["method"]["name"]),
                                         k=cfg.eval.hubness_k)}
    log.info("results in %s\n%s", out, format_table(results))
    log_to_logger(cfg, results, out, pngs)
    return results


# -- experiment logging --------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def log_to_logger(cfg: DictConfig, results: dict[str, Any], out: Path,
                  pngs: dict[str, Path]) -> None:
    """Send config, metrics, the results table and the plots to ``cfg.logger``; never raises."""
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
            group = f"{cfg.name}-{Path(hc.sweep.dir).name}"
    m = results["metrics"]
    metrics = dict(m["method"])
    metrics.update({f"baseline/{k}": v for k, v in m["baseline"].items()})
    metrics.update({f"delta/{k}": v for k, v in m["delta"].items()})
    metrics.update({f"time/{k}": v for k, v in results["timings_s"].items()})
    metrics["objective"] = objective_value(results)
    rows = [[r[c] for c in CSV_COLUMNS] for r in metric_rows(results)]
    with logger:
        logger.start(_flatten(results["config"]), name=name, group=group, dir=out)
        logger.log_metrics(metrics)
        logger.log_table("results", CSV_COLUMNS, rows)
        for key, path in pngs.items():
            logger.log_image(key, path)


def objective_value(results: dict[str, Any]) -> float:
    """The number a sweeper optimises (``cfg.objective`` of the method; NaN if missing)."""
    value = (results.get("objective") or {}).get("value")
    return float("nan") if value is None else float(value)
