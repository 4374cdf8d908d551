"""Parity with the authors' implementation (PyPI nnn-retrieval 1.0.1), run in a subprocess.

Their package is also imported as ``nnn``, so it lives outside the environment, in the folder that
``bash .ci/install_parity.sh`` fills (``$NNN_PARITY_DIR`` or ``<repo>/.parity/nnn_retrieval``),
and runs through ``benchmarks/run_nnn_retrieval.py`` with that folder alone on PYTHONPATH.
Their convention: ``alignment_means`` = mean of the top-``alternate_ks`` reference scores, and
search scores s(q, r) - ``alternate_weight`` * alignment_means; so our k = alternate_ks, alpha =
alternate_weight and bias_ = alternate_weight * alignment_means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnn.methods import NNN
from tolerances import EPS32, assert_topk_ids, dot_atol

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("NNN_PARITY_DIR", REPO / ".parity" / "nnn_retrieval"))
RUNNER = REPO / "benchmarks" / "run_nnn_retrieval.py"

pytestmark = pytest.mark.skipif(
    not (PARITY_DIR / "nnn" / "nnn_ranker.py").is_file(),
    reason=f"nnn-retrieval 1.0.1 not found in {PARITY_DIR}; run `bash .ci/install_parity.sh` "
           "(or set NNN_PARITY_DIR)")


PARAMS = [(16, 0.75), (128, 0.5), (1, 1.25)]  # (k, alpha) = (alternate_ks, alternate_weight)


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    """Seeded data and the authors' outputs for every (k, alpha) in PARAMS, from one subprocess."""
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(7)
    arrays = {}
    for name, n in (("gallery", 301), ("refs", 2003), ("queries", 97)):
        x = rng.standard_normal((n, 64))
        arrays[name] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        np.save(root / f"{name}.npy", arrays[name])
    env = {**os.environ, "PYTHONPATH": str(PARITY_DIR), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(RUNNER), "--data", str(root), "--out", str(root / "theirs"),
           "--top-k", "10", "--k", *[str(k) for k, _ in PARAMS],
           "--alpha", *[str(a) for _, a in PARAMS]]
    # cwd=root, so that neither the repo nor its `nnn` is on their sys.path
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return arrays, root / "theirs"


@pytest.mark.parametrize("run,k,alpha", [(i, k, a) for i, (k, a) in enumerate(PARAMS)])
def test_biases_and_top10_match_nnn_retrieval(parity_runs, run, k, alpha):
    arrays, theirs_root = parity_runs
    theirs = theirs_root / f"run{run}"
    info = json.loads((theirs / "info.json").read_text())
    assert Path(info["nnn_file"]).resolve().is_relative_to(PARITY_DIR.resolve()), info["nnn_file"]
    assert (info["k"], info["alpha"]) == (k, alpha)

    ours = NNN(k=k, alpha=alpha, batch_size=40, memory_budget_mb=(50 * 2003 * 4 + 1) / 2**20)
    ours.fit(arrays["gallery"], query_bank=arrays["refs"])
    # two float32 implementations (tolerances.py): similarities of the 64-d unit rows differ by
    # dot_atol(64), a mean of k of them (theirs may sum in float32) by k * EPS32 more
    bias_atol = alpha * (dot_atol(64) + k * EPS32) + 2 * EPS32
    score_atol = dot_atol(64) + bias_atol + 2 * EPS32
    np.testing.assert_allclose(ours.bias_, np.load(theirs / "bias.npy"), rtol=0,
                               atol=bias_atol)
    scores, ids = ours.search(arrays["queries"], top_k=10)
    # their top-10 is ours up to near-ties that the two roundings may order differently
    assert_topk_ids(np.load(theirs / "ids.npy"), ours.score(arrays["queries"]),
                    atol=2 * score_atol)
    np.testing.assert_allclose(scores, np.load(theirs / "scores.npy"), rtol=0,
                               atol=score_atol)
