"""The paper's numbers as data, for printing beside ours.

Source: Chowdhury et al., "Nearest Neighbor Normalization Improves Multimodal Retrieval", EMNLP
2024 (arXiv 2410.24114 v1), as collected in the project's paper-facts notes. Every number is one
row of ``paper_numbers.csv`` (package data, beside this module), read once into *records*::

    {"table": "table1", "model": "CLIP", "dataset": "flickr30k", "direction": "t2i",
     "method": "NNN", "refs": "coco", "param": None, "metric": "R@1", "value": 63.70}

Keys: ``dataset`` is the evaluation set ("flickr30k" | "coco"); ``direction`` "t2i" (the paper's
IR, text->image) or "i2t" (TR); ``method`` one of ``METHODS`` ("Orig" is the uncorrected model;
Table 1's "DBN" column is DualIS, the same numbers as Table A6); ``refs`` the dataset the
reference set / banks came from (None for "Orig"); ``param`` a table-specific setting ("k=16",
"fraction=0.2", "backend=faiss"); ``metric`` "R@1", "R@5", "R@10", "kurtosis", "max",
"delta R@1", "bias_time_s", "alpha", "k". Table 3's "BLIP COCO" / "BLIP Flickr" columns are
read as the BLIP fine-tuned on that evaluation set (the paper does not say which BLIP).

``paper_value(...)`` looks one number up; ``MODEL_ALIASES`` / ``DATASET_ALIASES`` map this
project's config names (``model=clip``, ``dataset=coco``) to the paper's names, and
``paper_model_of(...)`` also recognises the paper's checkpoints behind ``model=open_clip``,
``model=hf`` and LAVIS configs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nnn.task import DIRECTIONS

#: config name of an encoder (conf/model/*.yaml) -> the paper's model name
MODEL_ALIASES = {"clip": "CLIP", "siglip": "SigLIP", "blip_flickr": "BLIP ft.Flickr",
                 "blip_coco": "BLIP ft.COCO", "albef_flickr": "ALBEF ft.Flickr",
                 "albef_coco": "ALBEF ft.COCO"}
#: the paper's checkpoints by their identity in a model config: open_clip (model_name,
#: pretrained), Hugging Face model_id, LAVIS (name, model_type)
CHECKPOINT_ALIASES = {
    ("ViT-B-32", "openai"): "CLIP", ("ViT-B-16-SigLIP", "webli"): "SigLIP",
    "openai/clip-vit-base-patch32": "CLIP", "google/siglip-base-patch16-224": "SigLIP",
    "Salesforce/blip-itm-base-coco": "BLIP ft.COCO",
    "Salesforce/blip-itm-base-flickr": "BLIP ft.Flickr",
    ("albef_retrieval", "coco"): "ALBEF ft.COCO", ("albef_retrieval", "flickr"): "ALBEF ft.Flickr",
    ("blip_retrieval", "coco"): "BLIP ft.COCO", ("blip_retrieval", "flickr"): "BLIP ft.Flickr",
}
#: model choices whose checkpoint is all in their options (``model=open_clip
#: model.model_name=...``): a report names their runs by the checkpoint too
GENERIC_MODELS = ("open_clip", "hf", "precomputed")
#: config name of a dataset (conf/dataset/*.yaml) -> the paper's evaluation set
DATASET_ALIASES = {"flickr30k": "flickr30k", "coco": "coco"}
DATASETS = ("flickr30k", "coco")
DATASET_LABELS = {"flickr30k": "Flickr30k", "coco": "COCO"}
METHODS = ("Orig", "DN", "QB-Norm", "DIS", "DualIS", "DualDIS", "CSLS", "NNN")
#: typical 95% CI half-widths of the paper's R@1 (bootstrap), per (dataset, direction)
TYPICAL_R1_CI_HALF_WIDTH = {("flickr30k", "t2i"): 1.3, ("coco", "t2i"): 0.6,
                            ("flickr30k", "i2t"): 2.4, ("coco", "i2t"): 1.4}

#: the table names and what they hold
TABLES = {
    "table1": "Table 1: text->image R@1 (Orig / DBNorm / NNN with Flickr30k or COCO references)",
    "table2": "Table 2: image->text R@1 (same columns)",
    "baselines": "Tables A6/A7: every baseline, R@1, in-distribution references (20% of train)",
    "recall": "Tables A8-A11: R@1 / R@5 / R@10, NNN with Flickr30k or COCO references",
    "chosen": "Chosen (alpha, k) per evaluation set / reference set",
    "k_sweep": "k sweep: COCO text->image R@1, alpha = 0.75",
    "reference_size": "Reference-set size: R@1 with 10% / 20% / 50% / all training queries",
    "runtime": "Table A5: bias computation on COCO (one V100), exhaustive vs FAISS",
    "hubness": "Table 3: hubness of text->image retrieval (N_1 of each image), Orig -> NNN",
}

def checkpoint_of(model_config: dict | None) -> tuple | str | None:
    """The checkpoint identity of a resolved ``model`` config, as ``CHECKPOINT_ALIASES`` keys
    it: open_clip ``(model_name, pretrained)``, Hugging Face ``model_id``, LAVIS ``(name,
    model_type)``, precomputed ``(name, None)``; None for a config without one (``model=none``)."""
    cfg = model_config or {}
    for key in ((cfg.get("model_name"), cfg.get("pretrained")), cfg.get("model_id"),
                (cfg.get("name"), cfg.get("model_type"))):
        if key is not None and key != (None, None):
            return key
    return None


def paper_model_of(choice: str | None, model_config: dict | None = None) -> str | None:
    """The paper's name of a run's encoder, or None when the paper has no row for it.

    ``choice``: the run's ``model=`` option (``clip``, ``open_clip``, ``none``, ...);
    ``model_config``: its resolved ``model`` config, whose checkpoint identity
    (``checkpoint_of``) is looked up in ``CHECKPOINT_ALIASES`` (so ``model=open_clip
    model.model_name=ViT-B-32 model.pretrained=openai`` is the paper's CLIP too, and
    ``model=clip model.pretrained=laion2b_s34b_b79k`` is not); ``MODEL_ALIASES`` names the
    choice only when its config records no checkpoint.
    """
    key = checkpoint_of(model_config)
    if key is not None:
        return CHECKPOINT_ALIASES.get(key)
    return MODEL_ALIASES.get(choice)


PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
#: the columns of ``PAPER_CSV``; empty cells are None, ``value`` an int where written without "."
COLUMNS = ("table", "model", "dataset", "direction", "method", "refs", "param", "metric", "value")


def _value(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def read_paper_numbers(path: str | Path = PAPER_CSV) -> list[dict]:
    """The records of a paper-numbers CSV file (``COLUMNS``), in file order; a row naming an
    unknown table, method, dataset or direction is a ValueError."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{str(path)!r} has columns {reader.fieldnames}; "
                             f"expected {list(COLUMNS)}")
        records = [{c: (_value(row[c]) if c == "value" else row[c] or None) for c in COLUMNS}
                   for row in reader]
    for n, r in enumerate(records, start=2):
        for column, allowed in (("table", TABLES), ("method", METHODS), ("dataset", DATASETS),
                                ("direction", DIRECTIONS)):
            if r[column] not in allowed:
                raise ValueError(f"{str(path)!r} line {n}: {column} {r[column]!r} is not one of "
                                 f"{list(allowed)}; correct the row")
    return records


#: every number, one record each (see the module docstring)
RECORDS: list[dict] = read_paper_numbers()
_INDEX = {(r["table"], r["model"], r["dataset"], r["direction"], r["method"], r["refs"],
           r["param"], r["metric"]): r["value"] for r in RECORDS}
#: the paper's model names (``--paper-model``), as its numbers name them
PAPER_MODELS = tuple(sorted({r["model"] for r in RECORDS}))


def paper_value(table: str, model: str | None, dataset: str | None, direction: str,
                method: str, refs: str | None = None, *, param: str | None = None,
                metric: str = "R@1") -> float | None:
    """One number of the paper, or None when the paper has none for these keys.

    ``refs`` is ignored for method "Orig" (the uncorrected model has no references).
    """
    if table not in TABLES:
        raise ValueError(f"unknown paper table {table!r}; one of {sorted(TABLES)}")
    if method == "Orig":
        refs = None
    return _INDEX.get((table, model, dataset, direction, method, refs, param, metric))
