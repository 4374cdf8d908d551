"""The paper's tuning grids (paper-facts.md, "Method" and "Baselines"), one tuple per axis.

Each method class names its own in ``tuning_grid`` (``nnn.methods.base``); ``nnn.tuning``
searches them on the tuning part.
"""

from __future__ import annotations

import numpy as np

#: NNN alpha in {0.25, 0.375, ..., 1.5} (paper-facts.md "Method")
ALPHA_GRID = tuple(0.25 + 0.125 * i for i in range(11))
#: NNN k in {1, 2, 4, ..., 512} (paper-facts.md "Method"); also CSLS's k (our extension)
K_GRID = tuple(2 ** i for i in range(10))
#: MP's neighbourhood sizes: NNN's k grid without k = 1 (one distance has no spread); our choice,
#: the papers' MP has no k (k=None, the whole bank, is a constructor option)
MP_K_GRID = tuple(k for k in K_GRID if k >= 2)
#: QB-Norm / DBNorm: 20 log-spaced betas in [0.001, 400] (paper-facts.md "Baselines")
BETA_COARSE_GRID = tuple(float(b) for b in np.geomspace(0.001, 400.0, 20))
#: the second stage "again with a resolution of 20 values" (paper-facts.md "Baselines"): 20
#: log-spaced betas in [0.001, 15] for one bank and in [25, 200] for the other
BETA_LOW_DENSE_GRID = tuple(float(b) for b in np.geomspace(0.001, 15.0, 20))
BETA_HIGH_DENSE_GRID = tuple(float(b) for b in np.geomspace(25.0, 200.0, 20))
#: "plus beta = 0" (paper-facts.md "Baselines"): no normalisation by that bank
BETA_OFF = 0.0
#: QB-Norm's one axis: beta = 0, the coarse grid and both dense ranges, sorted (which range is
#: the query bank's is ambiguous in the paper; with one axis, searching both costs 40 points)
QB_NORM_BETA_GRID = tuple(sorted({BETA_OFF, *BETA_COARSE_GRID, *BETA_LOW_DENSE_GRID,
                                  *BETA_HIGH_DENSE_GRID}))
#: DBNorm's stages, name -> (beta_query values, beta_gallery values), each a product grid. Which
#: bank gets which dense range is ambiguous between the paper's equations (beta1, the low range,
#: on the gallery bank) and its appendix (beta_q low): both assignments are searched, and the
#: ``TuningResult`` records which stage the chosen point came from (``stages``, ``notes``).
DB_NORM_STAGES = {
    "coarse": ((BETA_OFF, *BETA_COARSE_GRID), (BETA_OFF, *BETA_COARSE_GRID)),
    "dense, query low": ((BETA_OFF, *BETA_LOW_DENSE_GRID), (BETA_OFF, *BETA_HIGH_DENSE_GRID)),
    "dense, gallery low": ((BETA_OFF, *BETA_HIGH_DENSE_GRID), (BETA_OFF, *BETA_LOW_DENSE_GRID)),
}
#: DN lambda in {0, 0.1, ..., 1}; the paper fixes lambda = 0.5 (paper-facts.md "Baselines")
DN_LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
