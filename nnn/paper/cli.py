"""The report's command line (``python experiments/make_tables.py PATH ... --out DIR``).

Which runs feed which table is decided by the experiment they ran (``experiment=paper_table1``
-> ``table1``, see ``nnn.paper.registry``). A run's model and evaluation dataset are matched to
the paper's from its config (``model=clip`` or ``model=open_clip`` with ViT-B-32/openai -> CLIP,
``dataset=coco`` -> COCO); runs the paper has no row for (``model=none`` on synthetic or
precomputed data) are named in one line of the report; ``--paper-model`` / ``--paper-dataset``
override the match for every run (a stand-in comparison for such runs).

Example (offline)::

    python run.py -m experiment=paper_table1 dataset=synthetic 'dataset@reference.dataset=synthetic,synthetic_shift'
    python experiments/make_tables.py outputs/multirun/paper_table1 --paper-model CLIP \\
        --paper-dataset flickr30k --out outputs/report
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from nnn.paper.numbers import DATASETS, PAPER_MODELS
from nnn.paper.registry import ALL_TABLES
from nnn.paper.report import make_report

log = logging.getLogger("make_tables")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_tables.py",
        description="Tables of our results beside the paper's numbers (Markdown + CSV + PNG).",
        epilog="Example: python experiments/make_tables.py outputs/multirun/paper_table1 "
               "--paper-model CLIP --paper-dataset flickr30k --out outputs/report")
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories or "
                        "results.json files (searched recursively)")
    parser.add_argument("--out", default="outputs/report", help="output directory "
                        "(default: outputs/report)")
    parser.add_argument("--tables", nargs="+", default=list(ALL_TABLES), choices=ALL_TABLES,
                        metavar="NAME", help=f"tables to build (default: all with runs): "
                        f"{', '.join(ALL_TABLES)}")
    parser.add_argument("--paper-model", default=None, choices=PAPER_MODELS, metavar="MODEL",
                        help="compare every run with this model of the paper: "
                             f"{', '.join(PAPER_MODELS)} (default: each run's own, from its "
                             "config: model=clip, siglip, blip_*, albef_*, or their checkpoints; "
                             "none for model=none)")
    parser.add_argument("--paper-dataset", default=None, choices=DATASETS,
                        help="compare every run with the paper's numbers on this evaluation "
                             "set (default: each run's dataset=coco / flickr30k; none for "
                             "synthetic or precomputed data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 1 (one logged line) for a missing or unwritable
    path or a bad value."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        written = make_report(args.paths, args.out, tables=args.tables,
                              paper_model=args.paper_model, paper_dataset=args.paper_dataset)
    except (OSError, ValueError) as err:
        log.error("%s", err)
        return 1
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return 0
