"""Completed runs, read through ``nnn.results``, and how each maps onto the paper's settings.

``load_runs(paths)`` finds every ``results.json`` under ``paths`` (single runs, sweep directories
or whole output trees; numbered job folders in numeric order) and keeps the completed ones as
``Run``: the run's folder and results, and the paper's model, evaluation set and reference set
it compares with (from its config, see ``nnn.paper.numbers.paper_model_of``, or given for every
run). References from another dataset than the evaluation set count as the paper's *other*
dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nnn.methods import method_class, paper_name
from nnn.paper.numbers import (DATASET_ALIASES, DATASETS, GENERIC_MODELS, MODEL_ALIASES,
                               checkpoint_of, paper_model_of)
from nnn.results import (RESULTS_JSON, chosen_params, directions_of, method_params, metric_of,
                         read_results)

log = logging.getLogger(__name__)


def paper_method(name: str, params: dict) -> str:
    """The paper's column of a method: its class name (results' ``method.name``) and parameters
    -> NNN, DualIS, DualDIS, DN, QB-Norm, DIS, CSLS, ... as the class declares it
    (``nnn.methods.paper_name``); a name no class has stays as it is."""
    try:
        cls = method_class(name)
    except ValueError:
        return name
    return paper_name(cls, dynamic=bool(params.get("dynamic")))


@dataclass
class Run:
    """One completed run and the paper's model / evaluation set / reference set it compares with."""

    dir: Path
    results: dict
    mtime: float
    paper_model: str | None = None
    paper_dataset: str | None = None
    paper_refs: str | None = None

    @property
    def label(self) -> str:
        """``model/dataset`` of the report's rows; the model with its checkpoint where the
        choice does not name one (``open_clip[ViT-B-16/laion2b_s34b_b88k]/coco``), so that
        runs of two checkpoints never share a row."""
        key = checkpoint_of(self.config.get("model"))
        named = self.model not in GENERIC_MODELS and (
            self.model not in MODEL_ALIASES
            or paper_model_of(self.model, self.config.get("model")) == MODEL_ALIASES[self.model])
        if key is None or named:
            return f"{self.model}/{self.dataset}"
        checkpoint = "/".join(str(x) for x in key if x is not None) if isinstance(key, tuple) \
            else str(key)
        return f"{self.model}[{checkpoint}]/{self.dataset}"

    @property
    def experiment(self) -> str | None:
        return (self.results.get("choices") or {}).get("experiment")

    @property
    def model(self) -> str:
        return (self.results.get("choices") or {}).get("model") or "none"

    @property
    def dataset(self) -> str:
        return str((self.results.get("data") or {}).get("dataset", "?"))

    @property
    def ref_dataset(self) -> str:
        return str((self.results.get("data") or {}).get("reference_dataset") or self.dataset)

    @property
    def params(self) -> dict:
        return method_params(self.results)

    @property
    def method(self) -> str:
        """The paper's name of the method (``paper_method``)."""
        return paper_method((self.results.get("method") or {}).get("name", "?"), self.params)

    @property
    def config(self) -> dict:
        return self.results.get("config") or {}

    def directions(self) -> list[str]:
        return directions_of(self.results)

    def metric(self, side: str, key: str) -> tuple:
        """(value, CI low, CI high) of ``side`` ("baseline" | "method" | "delta")."""
        return metric_of(self.results, side, key)

    def chosen(self, direction: str) -> dict:
        """The parameters used in ``direction``: tuned ones, else the config's."""
        return chosen_params(self.results, direction)


def _other(dataset: str | None) -> str | None:
    return None if dataset is None else next(d for d in DATASETS if d != dataset)


def _natural_key(path: Path) -> tuple:
    """Sort key that orders numbered folders by number (sweep jobs 0, 1, 2, ..., 10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (files or directories), deduplicated, sorted with
    numbered job folders in numeric order."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist; pass run or sweep directories "
                                    "(e.g. outputs/multirun/paper_table1) or results.json files")
        found.update([p] if p.is_file() else p.rglob(RESULTS_JSON))
    return sorted(found, key=_natural_key)


def load_runs(paths: Iterable[str | Path], *, paper_model: str | None = None,
              paper_dataset: str | None = None) -> list[Run]:
    """Completed runs under ``paths``, mapped to the paper's model / dataset / references:
    inferred from each run's config, or ``paper_model`` / ``paper_dataset`` for every run."""
    runs = []
    for path in find_results(paths):
        try:
            results = read_results(path)
        except (OSError, ValueError) as err:
            log.warning("skipping %s: not readable as JSON (%s)", path, err)
            continue
        if not isinstance(results, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
                type(results), "a number")
            log.warning("skipping %s: not a run's results (%s, not a JSON object)", path, kind)
            continue
        if results.get("status") != "completed":
            log.warning("skipping %s: status %s (%s)", path.parent, results.get("status"),
                        results.get("error"))
            continue
        run = Run(path.parent, results, path.stat().st_mtime)
        run.paper_model = paper_model or paper_model_of(run.model, run.config.get("model"))
        run.paper_dataset = paper_dataset or DATASET_ALIASES.get(run.dataset)
        if run.ref_dataset == run.dataset:
            run.paper_refs = run.paper_dataset
        else:
            run.paper_refs = DATASET_ALIASES.get(run.ref_dataset, _other(run.paper_dataset))
        runs.append(run)
    return runs

