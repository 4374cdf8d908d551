"""`sweep=optuna_nnn`: Hydra's Optuna sweeper (the [sweep] extra) chooses NNN's alpha and k.

One real subprocess: the sweeper plugin is found, its trials run as jobs of the multirun, each
job returns the tuning-split objective, and Optuna writes its best trial.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nnn.config_dir import CONFIG_DIR
from nnn.results import SWEEP_CSV

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                    reason="the [sweep] extra (hydra-optuna-sweeper) is not installed")

REPO = CONFIG_DIR.parent
KS = (1, 4, 8)  # debug=tiny has fewer references than the saved sweep's largest k


def test_optuna_sweep_runs_trials_and_reports_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "run.py", "sweep=optuna_nnn", "debug=tiny", "logger=none",
         "hydra.sweeper.n_trials=3", f"method.k=choice({','.join(map(str, KS))})",
         f"hydra.sweep.dir={sweep}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / SWEEP_CSV).open()))
    assert [r["status"] for r in rows] == ["completed"] * 3
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert 0.0 <= best.best_params["method.alpha"] <= 1.5
    assert best.best_params["method.k"] in KS
    objectives = [float(r["objective"]) for r in rows]
    assert best.best_value == pytest.approx(max(objectives), abs=1e-9)
