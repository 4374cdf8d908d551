"""The paper's numbers as data, for printing beside ours.

Source: Chowdhury et al., "Nearest Neighbor Normalization Improves Multimodal Retrieval", EMNLP
2024 (arXiv 2410.24114 v1), as collected in the project's paper-facts notes. The tables are kept
verbatim as Markdown blocks (easy to check against the paper) and parsed once into *records*,
one number each::

    {"table": "table1", "model": "CLIP", "dataset": "flickr30k", "direction": "t2i",
     "method": "NNN", "refs": "coco", "param": None, "metric": "R@1", "value": 63.70}

Keys: ``dataset`` is the evaluation set ("flickr30k" | "coco"); ``direction`` "t2i" (the paper's
IR, text->image) or "i2t" (TR); ``method`` one of ``METHODS`` ("Orig" is the uncorrected model;
Table 1's "DBN" column is DualIS, the same numbers as Table A6); ``refs`` the dataset the
reference set / banks came from (None for "Orig"); ``param`` a table-specific setting ("k=16",
"fraction=0.2", "backend=faiss"); ``metric`` "R@1", "R@5", "R@10", "kurtosis", "max",
"delta R@1", "bias_time_s", "alpha", "k".

``paper_value(...)`` looks one number up; ``MODEL_ALIASES`` / ``DATASET_ALIASES`` map this
project's config names (``model=clip``, ``dataset=coco``) to the paper's names, and
``paper_model_of(...)`` also recognises the paper's checkpoints behind ``model=open_clip``,
``model=hf`` and LAVIS configs.
"""

from __future__ import annotations

import re

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
#: config name of a dataset (conf/dataset/*.yaml) -> the paper's evaluation set
DATASET_ALIASES = {"flickr30k": "flickr30k", "coco": "coco"}
DATASETS = ("flickr30k", "coco")
DATASET_LABELS = {"flickr30k": "Flickr30k", "coco": "COCO"}
DIRECTION_LABELS = {"t2i": "IR (text->image)", "i2t": "TR (image->text)"}
METHODS = ("Orig", "DN", "QB-Norm", "DIS", "DualIS", "DualDIS", "CSLS", "NNN")
#: typical 95% CI half-widths of the paper's R@1 (bootstrap), per (dataset, direction)
TYPICAL_R1_CI_HALF_WIDTH = {("flickr30k", "t2i"): 1.3, ("coco", "t2i"): 0.6,
                            ("flickr30k", "i2t"): 2.4, ("coco", "i2t"): 1.4}

# -- the tables, verbatim --------------------------------------------------------------------
_TABLE1_T2I = """
| Model | Flickr Orig | DBN | NNN-F | NNN-C | COCO Orig | DBN | NNN-F | NNN-C |
| CLIP | 58.82 | 65.26 | 64.60 | 63.70 | 30.43 | 37.82 | 33.45 | 37.53 |
| CLIP ft.Flickr | 72.80 | 73.80 | 74.14 | 73.32 | 35.56 | 40.19 | 36.25 | 40.12 |
| CLIP ft.COCO | 67.40 | 68.36 | 68.86 | 68.04 | 45.89 | 47.57 | 46.14 | 47.39 |
| BLIP ft.Flickr | 83.58 | 83.12 | 84.32 | 84.06 | 56.44 | 59.72 | 57.22 | 59.70 |
| BLIP ft.COCO | 82.12 | 81.92 | 82.80 | 82.64 | 62.68 | 64.00 | 62.82 | 64.44 |
| ALBEF ft.Flickr | 79.50 | 79.86 | 80.26 | 79.90 | 52.53 | 56.62 | 53.18 | 56.67 |
| ALBEF ft.COCO | 74.54 | 76.10 | 76.60 | 75.80 | 59.73 | 62.72 | 60.10 | 62.66 |
| SigLIP | 74.62 | 76.02 | 76.54 | 76.08 | 47.15 | 49.93 | 48.49 | 50.24 |
| BEiT-3 | 75.52 | 76.08 | 76.66 | 76.30 | 47.62 | 50.08 | 47.93 | 50.64 |
| BEiT-3 ft.Flickr | 86.12 | 84.68 | 86.00 | 86.30 | 53.57 | 55.16 | 53.79 | 55.91 |
| BEiT-3 ft.COCO | 82.90 | 82.20 | 83.48 | 82.78 | 61.88 | 61.78 | 61.60 | 62.34 |
| BEiT-3 Large | 77.80 | 77.70 | 78.54 | 78.20 | 49.34 | 51.67 | 50.24 | 52.25 |
| BEiT-3 L ft.Flickr | 88.04 | 86.74 | 87.82 | 87.70 | 56.41 | 58.09 | 56.68 | 58.88 |
| BEiT-3 L ft.COCO | 86.24 | 85.12 | 86.64 | 86.18 | 63.83 | 63.57 | 63.75 | 64.20 |
"""

_TABLE2_I2T = """
| Model | Flickr Orig | DBN | NNN-F | NNN-C | COCO Orig | DBN | NNN-F | NNN-C |
| CLIP | 79.30 | 81.20 | 81.20 | 80.10 | 50.02 | 53.20 | 51.60 | 53.66 |
| CLIP ft.Flickr | 85.70 | 86.50 | 87.30 | 86.60 | 53.74 | 55.42 | 53.92 | 56.44 |
| CLIP ft.COCO | 82.10 | 81.90 | 82.80 | 82.70 | 63.74 | 64.72 | 63.88 | 65.26 |
| BLIP ft.Flickr | 93.40 | 95.70 | 95.20 | 94.30 | 72.26 | 78.28 | 75.90 | 78.30 |
| BLIP ft.COCO | 93.70 | 94.70 | 95.30 | 94.60 | 79.62 | 82.52 | 79.58 | 82.46 |
| ALBEF ft.Flickr | 92.40 | 93.10 | 92.60 | 92.70 | 69.82 | 74.62 | 71.06 | 74.44 |
| ALBEF ft.COCO | 87.30 | 90.50 | 90.00 | 89.30 | 78.60 | 80.54 | 79.10 | 80.68 |
| SigLIP | 89.00 | 91.60 | 91.30 | 91.30 | 65.32 | 69.14 | 66.80 | 69.86 |
| BEiT-3 | 89.10 | 90.70 | 91.80 | 90.90 | 61.12 | 68.94 | 65.66 | 69.12 |
| BEiT-3 ft.Flickr | 96.30 | 94.40 | 95.60 | 95.90 | 72.02 | 75.12 | 72.62 | 75.22 |
| BEiT-3 ft.COCO | 93.60 | 94.50 | 95.30 | 94.80 | 80.72 | 79.90 | 80.42 | 81.26 |
| BEiT-3 Large | 91.10 | 93.20 | 93.20 | 92.20 | 63.26 | 71.06 | 67.60 | 71.08 |
| BEiT-3 L ft.Flickr | 97.20 | 96.80 | 97.20 | 97.50 | 74.32 | 77.56 | 74.86 | 77.92 |
| BEiT-3 L ft.COCO | 95.50 | 95.00 | 95.30 | 96.20 | 82.10 | 80.88 | 81.98 | 82.72 |
"""

_BASELINES = """
| Setting | Orig | DN | DualIS | DualDIS | NNN |
| IR CLIP Flickr | 58.82 | 62.06 | 65.26 | 65.20 | 64.60 |
| IR CLIP COCO | 30.43 | 32.47 | 37.82 | 37.81 | 37.53 |
| IR SigLIP Flickr | 74.62 | 75.22 | 76.02 | 76.04 | 76.54 |
| IR SigLIP COCO | 47.15 | 47.75 | 49.93 | 49.92 | 50.24 |
| IR BEiT-3 Flickr | 75.52 | 75.72 | 76.08 | 76.10 | 76.66 |
| IR BEiT-3 COCO | 47.62 | 47.75 | 50.08 | 50.04 | 50.64 |
| TR CLIP Flickr | 79.30 | 78.50 | 81.20 | 81.10 | 81.20 |
| TR CLIP COCO | 50.02 | 50.00 | 53.20 | 52.92 | 53.66 |
| TR SigLIP COCO | 65.32 | 66.04 | 69.14 | 69.18 | 69.86 |
| TR BEiT-3 COCO | 61.12 | 65.62 | 68.94 | 68.36 | 69.12 |
"""

_RECALL = """
| Setting | Original | NNN (Flickr refs) | NNN (COCO refs) |
| CLIP COCO IR | 30.45 / 54.78 / 66.23 | 33.88 / 59.12 / 69.84 | 37.76 / 63.11 / 73.46 |
| CLIP Flickr IR | 58.82 / 83.44 / 90.08 | 65.52 / 87.84 / 93.00 | 64.42 / 87.24 / 92.36 |
| CLIP COCO TR | 50.02 / 74.84 / 83.18 | 51.74 / 75.94 / 83.86 | 54.16 / 77.60 / 85.46 |
| CLIP Flickr TR | 79.30 / 95.00 / 98.10 | 81.50 / 95.70 / 97.90 | 79.70 / 95.50 / 98.00 |
| SigLIP COCO IR | 47.18 / 72.08 / 80.58 | 48.72 / 73.20 / 81.78 | 50.72 / 74.99 / 82.70 |
| SigLIP Flickr IR | 74.62 / 92.30 / 95.62 | 76.80 / 93.30 / 96.12 | 76.22 / 92.88 / 95.84 |
| BEiT-3 COCO IR | 47.64 / 72.54 / 81.20 | 48.22 / 73.31 / 81.86 | 50.83 / 75.56 / 83.42 |
| BEiT-3 Flickr IR | 75.52 / 92.76 / 95.96 | 77.20 / 93.92 / 96.60 | 76.36 / 93.44 / 96.48 |
"""

_CHOSEN = """
| Model | IR F/F | IR F/C | IR C/F | IR C/C | TR F/F | TR F/C | TR C/F | TR C/C |
| CLIP | .75,128 | .75,16 | .5,8 | .75,256 | .75,16 | .5,2 | .5,8 | .75,128 |
| SigLIP | .75,128 | .5,128 | .5,16 | .75,128 | .5,64 | .75,256 | .25,32 | .75,128 |
| BEiT-3 | .75,32 | .5,64 | .25,4 | .75,128 | .75,64 | .5,32 | .5,32 | .75,256 |
"""

_K_SWEEP = """
| Model | Orig | k=1 | 4 | 8 | 16 | 32 | 64 | 128 |
| CLIP | 30.45 | 35.47 | 36.57 | 36.96 | 37.36 | 37.52 | 37.67 | 37.77 |
| SigLIP | 47.18 | 48.54 | 49.50 | 49.90 | 50.23 | 50.45 | 50.60 | 50.72 |
| BEiT-3 | 47.64 | 49.42 | 50.25 | 50.58 | 50.84 | 50.88 | 50.89 | 50.83 |
"""

_REFERENCE_SIZE = """
| Setting | Orig | full | 50% | 20% | 10% |
| Flickr IR CLIP | 58.82 | 64.94 | 64.80 | 64.60 | 64.84 |
| COCO IR CLIP | 30.43 | 37.74 | 37.48 | 37.53 | 37.43 |
| COCO IR SigLIP | 47.15 | 50.70 | 50.72 | 50.24 | 50.15 |
| COCO IR BEiT-3 | 47.62 | 50.81 | 50.80 | 50.64 | 50.50 |
| COCO TR CLIP | 50.02 | 53.94 | 53.88 | 53.66 | 53.66 |
| COCO TR SigLIP | 65.32 | 70.24 | 70.42 | 69.86 | 69.98 |
"""

_RUNTIME = """
| Model | exhaustive GPU (s) | GPU Faiss (s) | speed-up | IR R@1 exact → Faiss |
| CLIP | 22.69 | 0.41 | 55× | 37.76 → 37.67 |
| SigLIP | 31.25 | 0.21 | 151× | 50.72 → 50.52 |
| BLIP ft.COCO | 10.59 | 0.16 | 65× | 64.49 → 64.45 |
"""

_HUBNESS = """
| | CLIP COCO | CLIP Flickr | BLIP COCO | BLIP Flickr |
| kurtosis | 59.8 → 9.5 | 9.0 → 1.1 | 32.1 → 12.3 | 3.2 → 1.9 |
| max | 162 → 48 | 39 → 15 | 59 → 32 | 15 → 12 |
| Δ R@1 | +7.4 | +6.5 | +1.8 | +1.2 |
"""

#: the paper's Table 3 column -> (model, evaluation set); our reading: each BLIP is the one
#: fine-tuned on the evaluation set (the paper does not say which BLIP)
HUBNESS_COLUMNS = {"CLIP COCO": ("CLIP", "coco"), "CLIP Flickr": ("CLIP", "flickr30k"),
                   "BLIP COCO": ("BLIP ft.COCO", "coco"),
                   "BLIP Flickr": ("BLIP ft.Flickr", "flickr30k")}

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

def paper_model_of(choice: str | None, model_config: dict | None = None) -> str | None:
    """The paper's name of a run's encoder, or None when the paper has no row for it.

    ``choice``: the run's ``model=`` option (``clip``, ``open_clip``, ``none``, ...);
    ``model_config``: its resolved ``model`` config, whose checkpoint identity is looked up in
    ``CHECKPOINT_ALIASES`` (so ``model=open_clip model.model_name=ViT-B-32
    model.pretrained=openai`` is the paper's CLIP too).
    """
    if choice in MODEL_ALIASES:
        return MODEL_ALIASES[choice]
    cfg = model_config or {}
    for key in ((cfg.get("model_name"), cfg.get("pretrained")), cfg.get("model_id"),
                (cfg.get("name"), cfg.get("model_type"))):
        if key in CHECKPOINT_ALIASES:
            return CHECKPOINT_ALIASES[key]
    return None


_DIR = {"IR": "t2i", "TR": "i2t"}
_DS = {"Flickr": "flickr30k", "COCO": "coco", "F": "flickr30k", "C": "coco"}


def _rows(block: str) -> list[list[str]]:
    """Cells of a Markdown table block (the header row included, separator rows excluded)."""
    out = []
    for line in block.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):
            out.append(cells)
    return out


def _num(text: str) -> float:
    return float(text.replace("×", "").replace("+", "").strip())


def _rec(table, model, dataset, direction, method, refs, metric, value, param=None) -> dict:
    return {"table": table, "model": model, "dataset": dataset, "direction": direction,
            "method": method, "refs": refs, "param": param, "metric": metric,
            "value": value if isinstance(value, int) else float(value)}


def _table12(block: str, table: str, direction: str) -> list[dict]:
    cols = [(d, m, r) for d in DATASETS for m, r in
            (("Orig", None), ("DualIS", d), ("NNN", "flickr30k"), ("NNN", "coco"))]
    return [_rec(table, row[0], d, direction, m, r, "R@1", _num(v))
            for row in _rows(block)[1:] for (d, m, r), v in zip(cols, row[1:])]


def _setting(text: str) -> tuple[str, str, str]:
    """'IR CLIP Flickr' / 'CLIP COCO IR' / 'COCO TR SigLIP' -> (model, dataset, direction)."""
    words = text.split()
    direction = next(_DIR[w] for w in words if w in _DIR)
    dataset = next(_DS[w] for w in words if w in ("Flickr", "COCO"))
    model = " ".join(w for w in words if w not in _DIR and w not in ("Flickr", "COCO"))
    return model, dataset, direction


def _baselines(block: str) -> list[dict]:
    rows = _rows(block)
    out = []
    for row in rows[1:]:
        model, ds, d = _setting(row[0])
        for method, v in zip(rows[0][1:], row[1:]):
            out.append(_rec("baselines", model, ds, d, method, None if method == "Orig" else ds,
                            "R@1", _num(v)))
    return out


def _recall(block: str) -> list[dict]:
    cols = (("Orig", None), ("NNN", "flickr30k"), ("NNN", "coco"))
    out = []
    for row in _rows(block)[1:]:
        model, ds, d = _setting(row[0])
        for (method, refs), cell in zip(cols, row[1:]):
            for metric, v in zip(("R@1", "R@5", "R@10"), cell.split("/")):
                out.append(_rec("recall", model, ds, d, method, refs, metric, _num(v)))
    return out


def _chosen(block: str) -> list[dict]:
    rows = _rows(block)
    out = []
    for row in rows[1:]:
        for head, cell in zip(rows[0][1:], row[1:]):
            direction, pair = head.split()
            ds, refs = (_DS[x] for x in pair.split("/"))
            alpha, k = cell.split(",")
            out.append(_rec("chosen", row[0], ds, _DIR[direction], "NNN", refs, "alpha", _num(alpha)))
            out.append(_rec("chosen", row[0], ds, _DIR[direction], "NNN", refs, "k", int(k)))
    return out


def _k_sweep(block: str) -> list[dict]:
    rows = _rows(block)
    ks = [int(re.sub(r"\D", "", h)) for h in rows[0][2:]]
    out = []
    for row in rows[1:]:
        out.append(_rec("k_sweep", row[0], "coco", "t2i", "Orig", None, "R@1", _num(row[1])))
        out += [_rec("k_sweep", row[0], "coco", "t2i", "NNN", "coco", "R@1", _num(v),
                     param=f"k={k}") for k, v in zip(ks, row[2:])]
    return out


def _reference_size(block: str) -> list[dict]:
    rows = _rows(block)
    fractions = {"full": 1.0, "50%": 0.5, "20%": 0.2, "10%": 0.1}
    out = []
    for row in rows[1:]:
        model, ds, d = _setting(row[0])
        out.append(_rec("reference_size", model, ds, d, "Orig", None, "R@1", _num(row[1])))
        out += [_rec("reference_size", model, ds, d, "NNN", ds, "R@1", _num(v),
                     param=f"fraction={fractions[h]}") for h, v in zip(rows[0][2:], row[2:])]
    return out


def _runtime(block: str) -> list[dict]:
    out = []
    for model, exact_s, faiss_s, _speedup, r1 in _rows(block)[1:]:
        r1_exact, r1_faiss = (_num(v) for v in r1.split("→"))
        for backend, seconds, r1_value in (("exact", exact_s, r1_exact),
                                           ("faiss", faiss_s, r1_faiss)):
            p = f"backend={backend}"
            out.append(_rec("runtime", model, "coco", "t2i", "NNN", "coco", "bias_time_s",
                            _num(seconds), param=p))
            out.append(_rec("runtime", model, "coco", "t2i", "NNN", "coco", "R@1", r1_value,
                            param=p))
    return out


def _hubness(block: str) -> list[dict]:
    rows = _rows(block)
    out = []
    for row in rows[1:]:
        metric = "delta R@1" if "R@1" in row[0] else row[0]
        for head, cell in zip(rows[0][1:], row[1:]):
            model, ds = HUBNESS_COLUMNS[head]
            if metric == "delta R@1":
                out.append(_rec("hubness", model, ds, "t2i", "NNN", ds, metric, _num(cell)))
                continue
            before, after = (_num(v) for v in cell.split("→"))
            out.append(_rec("hubness", model, ds, "t2i", "Orig", None, metric, before))
            out.append(_rec("hubness", model, ds, "t2i", "NNN", ds, metric, after))
    return out


def _all_records() -> list[dict]:
    return [*_table12(_TABLE1_T2I, "table1", "t2i"), *_table12(_TABLE2_I2T, "table2", "i2t"),
            *_baselines(_BASELINES), *_recall(_RECALL), *_chosen(_CHOSEN),
            *_k_sweep(_K_SWEEP), *_reference_size(_REFERENCE_SIZE), *_runtime(_RUNTIME),
            *_hubness(_HUBNESS)]


#: every number, one record each (see the module docstring)
RECORDS: list[dict] = _all_records()
_INDEX = {(r["table"], r["model"], r["dataset"], r["direction"], r["method"], r["refs"],
           r["param"], r["metric"]): r["value"] for r in RECORDS}


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


def paper_models(table: str) -> list[str]:
    """The models a table reports, in the paper's order."""
    return list(dict.fromkeys(r["model"] for r in RECORDS if r["table"] == table))
