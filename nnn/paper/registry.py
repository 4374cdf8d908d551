"""The report's tables: each declares its name, title, note, builder and the runs it takes.

``TABLES`` (name -> ``Table``) in the report's order. A builder gets the runs the table takes
(those of its ``experiments``; every run where that is None) and the output folder (for the
figures it draws), and returns a ``Comparison`` (ours beside the paper's) or
``{csv name: (columns, rows)}`` (tables of what the runs hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnn.paper import paper_tables as pt
from nnn.paper.comparison import Comparison
from nnn.paper.numbers import TABLES as PAPER_TITLES
from nnn.paper.run_tables import alpha_k_table, hubs_tables, runs_table
from nnn.paper.runs import Run

_TABLE12_NOTE = ("Orig: the uncorrected model of every run. DBNorm = DualIS with in-distribution "
                 "references. Parameters chosen on the tuning part of the training split.")


@dataclass(frozen=True)
class Table:
    """One table of the report (see the module docstring)."""

    name: str
    title: str
    build: Callable[[Sequence[Run], Path], "Comparison | dict[str, tuple[list, list]]"]
    experiments: tuple[str, ...] | None = None  # None: every run
    note: str = ""
    exact: bool = False  # values are hyper-parameters: shown in full, no point plot
    sweep: tuple[Callable[[str], float | None], str] | None = None  # (x of a column, x label)

    def runs(self, runs: Sequence[Run]) -> list[Run]:
        """The runs this table takes."""
        return list(runs) if self.experiments is None else \
            [r for r in runs if r.experiment in self.experiments]


def _paper(name: str, build, experiments, **kw) -> Table:
    """A comparison table titled as in ``nnn.paper.numbers.TABLES``."""
    return Table(name, PAPER_TITLES[name], lambda runs, out: build(runs), experiments, **kw)


_ALL = (
    _paper("table1", lambda r: pt.build_table12(r, "table1"), ("paper_table1",),
           note=_TABLE12_NOTE),
    _paper("table2", lambda r: pt.build_table12(r, "table2"), ("paper_table2",),
           note=_TABLE12_NOTE),
    _paper("baselines", pt.build_baselines, ("paper_baselines",)),
    _paper("recall", pt.build_recall, ("paper_recall",)),
    _paper("k_sweep", pt.build_k_sweep, ("paper_k_sweep",), sweep=(pt.k_of, "k")),
    _paper("reference_size", pt.build_reference_size,
           ("paper_reference_size", "ablation_reference_size"),
           sweep=(pt.fraction_of, "reference fraction")),
    _paper("runtime", pt.build_runtime, ("paper_runtime", "ablation_backend"),
           note="Bias time: the method's fit (top-k reference search and biases) on this "
                "machine; the paper's on one V100. Speed-up: exact time / FAISS time."),
    _paper("hubness", pt.build_hubness, ("paper_hubness", "ablation_hubs"),
           note="N_1: how many test captions have each test image as their top-1."),
    Table("ood", "Ablation: in-distribution against out-of-distribution references (R@1)",
          lambda runs, out: pt.build_ood(runs), ("ablation_ood_references",),
          note="Paper numbers: Table 1 (t2i) / Table 2 (i2t), NNN with Flickr30k or COCO "
               "references."),
    _paper("chosen", pt.build_chosen, None, exact=True),
    Table("alpha_k", "Ablation: NNN's R@1 over the alpha x k grid",
          lambda runs, out: {"alpha_k": alpha_k_table(runs, out)},
          note="The tuning split's grid chooses (alpha, k). The test split's grid is an "
               "analysis of how R@1 depends on them; it is never used to choose."),
    Table("hubs", "Ablation: the biggest hubs and how many items have each N_k, before -> after",
          lambda runs, out: hubs_tables(runs)),
    Table("runs", "Every run: R@1 of the uncorrected model and of the method",
          lambda runs, out: {"runs": runs_table(runs)}),
)
#: every table of the report, by name, in the report's order
TABLES: dict[str, Table] = {t.name: t for t in _ALL}
ALL_TABLES = tuple(TABLES)
