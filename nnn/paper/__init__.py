"""Run outputs -> the paper's comparison tables (Markdown, CSV, PNG).

- ``numbers``: the paper's numbers (``paper_numbers.csv``, one row per number) and how this
  project's model and dataset names map onto the paper's;
- ``runs``: completed runs read through ``nnn.results``, matched to the paper's settings;
- ``comparison``: one table of ours beside the paper's, as Markdown, CSV rows and plots;
- ``paper_tables`` / ``run_tables``: the builders; ``registry``: which table is built how;
- ``report``: ``make_report`` writes the whole report; ``cli``: ``experiments/make_tables.py``.
"""

from nnn.paper.registry import ALL_TABLES, TABLES
from nnn.paper.report import make_report

__all__ = ["ALL_TABLES", "TABLES", "make_report"]
