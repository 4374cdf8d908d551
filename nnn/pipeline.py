"""The experiment pipeline: ``run(cfg)`` orders the steps of one experiment.

With ``nnn.settings`` (the config read into plain values) the only module that reads the config.
Each step lives in its own module and takes plain values:

1. *load* / *embed*: the evaluation split, the reference set and the tuning part
   (``nnn.data.assemble``); raw images and captions are embedded by ``cfg.model`` through the
   cache (``nnn.embed``), only the evaluation split and the drawn images.
2. *tune* (``tune.enabled``): hyper-parameters chosen per direction on the tuning part, never on
   test (``nnn.tuning``).
3. *fit* / *evaluate*: per direction (``nnn.task``) the method beside the uncorrected baseline
   (``nnn.evaluation``); optional analyses of the evaluation split that choose nothing
   (``nnn.ablations``); the objective a sweeper gets.
4. ``results.json`` is written before anything else (``nnn.results``), also for a failed run;
   then the plots and tables (``nnn.reporting``), then the logger, whose run was started in the
   background when the run began and is finished as failed if the run fails.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnn._timing import timed
from nnn.config_dir import OUTPUT_DIR_REMEDY, TUNE_SWITCH, TUNING_AUTO
from nnn.data.base import EmbeddingSet
from nnn.loggers import NullLogger, check_settings, sweep_group
from nnn.errors import explained_os_errors
from nnn.reporting import flatten, log_to_logger, write_run_files
from nnn.results import format_table, write_results
from nnn.settings import (REFERENCE_DATASET_KEY, analysis_nnn_keywords, build, build_logger,
                          build_method, check_config, check_k_fits, hydra_job,
                          method_description, needs_tuning_part, reference_dataset_config,
                          reference_dataset_name, tune_switch, tuner_arguments, tuning_requested,
                          used_parameters)

if TYPE_CHECKING:
    from nnn.evaluation import EvalSettings
    from nnn.task import RetrievalTask

# torch and matplotlib (methods, metrics, tuning, ablations, plots) are imported where they are
# used, so that composing and checking a config stays fast (``run.py --help`` needs none)

log = logging.getLogger(__name__)

# -- data ----------------------------------------------------------------------------------------
def _encode(cfg: DictConfig, parts: dict[str, tuple[Any, str, Any, Any]],
            timings: dict[str, float]) -> dict[str, EmbeddingSet]:
    """Embed ``parts`` ({key: (raw dataset, split name, image rows or None, subset
    description)}) with ``cfg.model`` through the embedding cache (``nnn.embed``)."""
    from nnn.embed import embed_dataset_split  # encoders and image IO: only for raw datasets

    with timed(timings, "load"):
        encoder = build(cfg.model, "model")  # not loaded: the extraction loads it on a cache miss
        cache = build(cfg.cache, "cache")
    options = OmegaConf.to_container(cfg.extract, resolve=True)
    with timed(timings, "embed"):
        return {key: embed_dataset_split(encoder, dataset, name, cache, rows=rows, subset=subset,
                                         **options)
                for key, (dataset, name, rows, subset) in parts.items()}


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
        splits = load_splits(build(cfg.dataset, "dataset"), eval_split=cfg.eval.split,
                             source=r.source, ref_dataset=None if ref_cfg is None
                             else build(ref_cfg, REFERENCE_DATASET_KEY))
    n_tuning, how = tuning_size(r.tuning_size, n_images(splits.test), n_images(splits.source),
                                r.fraction, auto=needs_tuning_part(cfg))
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


# -- evaluation ----------------------------------------------------------------------------------
def _tune(cfg: DictConfig, tuning: EmbeddingSet | None, reference: EmbeddingSet,
          timings: dict[str, float]) -> dict:
    """Per direction, the ``TuningResult`` of the method's grid on the tuning part."""
    if tuning is None:
        raise ValueError(f"{TUNE_SWITCH}=true needs a tuning part, but reference.tuning_size="
                         f"{cfg.reference.tuning_size}: use reference.tuning_size={TUNING_AUTO} "
                         "(the paper's protocol), 'test' or a number of images")
    from nnn.tuning import tune

    option, keywords = tuner_arguments(cfg)
    out = {}
    for direction in cfg.eval.directions:
        with timed(timings, f"{direction}/tune"):
            out[direction] = tune(option, tuning, reference, direction,
                                  batch_size=cfg.eval.batch_size, **keywords)
        log.info("%s: tuned %s on %d tuning images: %s (R@1 %.2f)", direction, option,
                 len(tuning.image), out[direction].best, out[direction].best_score)
    return out


def _alpha_k_analysis(cfg: DictConfig, task: RetrievalTask,
                      timings: dict[str, float]) -> dict[str, Any]:
    """``nnn.ablations.alpha_k_analysis`` with ``cfg.analysis``'s axes and, when the run's
    method is NNN, its backend, index and batch sizes."""
    from nnn.ablations import alpha_k_analysis

    with timed(timings, f"{task.direction}/analysis_alpha_k"):
        axes = OmegaConf.to_container(cfg.analysis, resolve=True)  # lists, not ListConfigs
        return alpha_k_analysis(task, alphas=axes["alphas"], ks=axes["ks"],
                                split=cfg.eval.split, batch_size=cfg.eval.batch_size,
                                **analysis_nnn_keywords(cfg))


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
            "reference_dataset": reference_dataset_name(cfg, dataset)}


def _tune_if_asked(cfg: DictConfig, results: dict[str, Any], tuning: EmbeddingSet | None,
                   reference: EmbeddingSet) -> dict:
    """Per direction, the ``TuningResult`` when tuning is requested ({} otherwise); records
    what was tuned and which parameters each direction uses in ``results``."""
    tuned = _tune(cfg, tuning, reference, results["timings_s"]) if tuning_requested(cfg) else {}
    results["tuning"] = {d: r.to_dict() for d, r in tuned.items()}
    if tuned:
        results["method"] = used_parameters(results["method"], tuned)
    elif tune_switch(cfg):
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


def _evaluate_all(cfg: DictConfig, results: dict[str, Any], settings: EvalSettings
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill ``results`` (data, tuning, metrics, analysis, objective, timings); returns N_k counts
    per direction (baseline, method)."""
    from nnn.ablations import hub_analysis
    from nnn.evaluation import objective

    info: dict[str, Any] = {}
    test, reference, tuning = load_sets(cfg, results["timings_s"], info)
    results["data"] = _data_summary(cfg, results, test, reference, tuning,
                                    info.get("tuning_part", "none"))
    log.info("data: %s", results["data"])
    tuned = _tune_if_asked(cfg, results, tuning, reference)
    check_k_fits(cfg, test, reference, [d for d in cfg.eval.directions if d not in tuned])

    def make_method(direction: str):
        return tuned[direction].estimator() if direction in tuned else build_method(cfg)

    counts = _evaluate_directions(cfg, results, settings, test, reference, make_method)
    if cfg.analysis.top_hubs:  # the biggest hubs and how many items have each N_k, before/after
        results["analysis"]["hubs"] = hub_analysis(counts, cfg.analysis.top_hubs)
    with timed(results["timings_s"], "objective"):
        hc = hydra_job()
        results["objective"] = objective(
            str(cfg.objective), results["metrics"]["method"], eval_split=cfg.eval.split,
            tuning=tuning, reference=reference, make_method=make_method, tuned=tuned,
            batch_size=cfg.eval.batch_size, multirun=hc is not None and hc.mode == RunMode.MULTIRUN)
    return counts


# -- the run -------------------------------------------------------------------------------------
def _new_results(cfg: DictConfig) -> dict[str, Any]:
    hc = hydra_job()
    return {
        "status": "running", "error": None, "name": cfg.name,
        "overrides": list(hc.overrides.task) if hc is not None else [],
        "choices": dict(hc.runtime.choices) if hc is not None else {},
        "method": method_description(cfg),
        "data": {}, "tuning": {}, "metrics": {}, "analysis": {}, "timings_s": {}, "objective": None,
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
        hc = hydra_job()
        if hc is None or OmegaConf.is_missing(hc.runtime, "output_dir"):
            raise ValueError("run() outside a Hydra job needs output_dir=")
        output_dir = hc.runtime.output_dir
    out = Path(output_dir)
    check_settings(OmegaConf.select(cfg, "logger.settings"))  # no API key into results.json
    results = _new_results(cfg)
    logger, t0 = NullLogger(), time.perf_counter()
    try:  # the config is checked before the logger's run starts: a mistake leaves none
        settings = check_config(cfg)
        logger = _start_logger(cfg, results, out)  # in the background: overlaps the run
        import nnn.metrics  # noqa: F401  torch: imported here, outside the run's timings
        import nnn.tuning  # noqa: F401
        t0 = time.perf_counter()
        counts = _evaluate_all(cfg, results, settings)
        results["status"] = "completed"
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"  # one line
        logger.finish(exit_code=1)  # the logger's run is marked failed; results.json says why
        raise
    finally:
        results["timings_s"]["total"] = time.perf_counter() - t0
        with explained_os_errors("write the run's results in", out, OUTPUT_DIR_REMEDY):
            write_results(out, results)
    try:
        pngs, tables = write_run_files(results, counts, out, hubness_k=cfg.eval.hubness_k)
    except BaseException:
        logger.finish(exit_code=1)  # e.g. a full disk: the logger's run ends with the error
        raise
    log.info("results in %s\n%s", out, format_table(results))
    log_to_logger(logger, results, pngs, tables)
    return results


def _start_logger(cfg: DictConfig, results: dict[str, Any], out: Path):
    """``cfg.logger`` (a setting it refuses is a user error), its run started in the background
    with the run's config. Jobs of a sweep share a W&B group (``sweep_group``)."""
    logger = build_logger(cfg)
    hc = hydra_job()
    group, name = cfg.name, cfg.name
    if hc is not None:
        name = hc.job.override_dirname or cfg.name
        if hc.mode == RunMode.MULTIRUN:
            group = sweep_group(cfg.name, hc.sweep.dir)
    logger.start(flatten(results["config"]), name=name, group=group, dir=out, background=True)
    return logger
