#!/usr/bin/env bash
# Prove the lower bounds in pyproject.toml: install every direct dependency (core and the extras
# cpu, encoders, distributed, sweep, notebooks, dev) at exactly its floor into a separate venv,
# install this checkout into it (editable, so the tests import this tree's nnn), and run the fast
# tests that exercise each dependency. Indirect dependencies get the newest versions that fit.
#
# Usage: bash .ci/lowest.sh [pytest args...]
#   VENV=DIR        the venv to (re)create (default: <repo>/.venv-lowest, git-ignored)
#   LOWEST_TORCH=V  install torch V instead of its floor (PyPI's Linux torch wheels bring ~3 GB of
#                   CUDA libraries; a local CPU wheel, e.g. 2.13.0, avoids the download)
# With no pytest args it runs the subset in TESTS below with -m "not slow". The [gpu] extra
# (faiss-gpu-cu12) is not exercised here: it needs a CUDA GPU.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv-lowest}"
constraints="$venv/lowest-constraints.txt"

TESTS=(
    tests/test_method_contract.py tests/test_nnn.py      # numpy, torch, faiss-cpu
    tests/test_exact_routes.py                           # torch: sampled_addmm, nextafter
    tests/test_metrics.py                                # scipy (the bootstrap compared)
    tests/test_cache.py tests/test_precomputed.py        # filelock, safetensors, pillow
    tests/test_configs.py tests/test_pipeline.py         # hydra-core, omegaconf, matplotlib, tqdm
    tests/test_wandb_logging.py                          # wandb
    tests/test_encoders_open_clip.py tests/test_encoders_hf.py  # open_clip, transformers, hub
    tests/test_embed_lightning.py                        # lightning
    tests/test_optuna_sweeper.py                         # hydra-optuna-sweeper
    tests/test_notebooks.py                              # nbclient, nbformat, ipykernel
)

rm -rf "$venv"
python3 -m venv "$venv"
# name==floor for every ">=" requirement of the core and of every extra but [gpu]
"$venv/bin/python" - "$repo/pyproject.toml" "${LOWEST_TORCH:-}" > "$constraints" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
torch = sys.argv[2]
extras = project["optional-dependencies"]
reqs = project["dependencies"] + [r for name, rs in extras.items() if name != "gpu" for r in rs]
for req in reqs:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)(,.*)?", req.strip())
    if m is None:  # the self-reference nnn-hubness[...] in [dev]
        continue
    name, floor = m.group(1), m.group(2)
    if name == "torch" and torch:
        floor = torch
    print(f"{name}=={floor}")
EOF
echo "lowest versions (constraints, $constraints):"
sed 's/^/  /' "$constraints"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -c "$constraints" -e "$repo[dev,cpu]"
"$venv/bin/pip" check
echo "installed:"
"$venv/bin/pip" list --format=freeze | sed 's/^/  /'
cd "$repo"
if (($#)); then
    "$venv/bin/python" -m pytest "$@"
else
    "$venv/bin/python" -m pytest -q -m "not slow" "${TESTS[@]}"
fi
