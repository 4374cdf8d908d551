#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with the packages the GPU machine lacks on the path:
# .gpu_deps/site (built here by benchmarks/gpu_deps.sh and carried) and the authors'
# nnn-retrieval in .gpu_deps/parity. Options go to gpu_check.py (--help); see
# benchmarks/RESULTS.md, "GPU check — to run".
#
#   bash benchmarks/gpu_check.sh                        # on the GPU machine (<= 8 minutes)
#   bash benchmarks/gpu_check.sh --device cpu --small   # CPU dry run
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh ...   # another interpreter
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${NNN_GPU_DEPS:-$repo/.gpu_deps}"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    py=python3
    [[ -x "$repo/.venv/bin/python" ]] && py="$repo/.venv/bin/python"
fi
if [[ ! -d "$deps/site" ]]; then
    echo "gpu_check.sh: $deps/site is missing: run 'bash benchmarks/gpu_deps.sh' on a machine" \
         "with PyPI access and carry .gpu_deps" >&2
    exit 2
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "gpu_check.sh: $("$py" -V 2>&1) at $(command -v "$py") is too old: nnn needs Python >= 3.10" >&2
    exit 2
}
site="$deps/site"
wheels=("$deps"/wheels/*.whl)
if [[ -e "${wheels[0]}" ]]; then  # carried binary wheels (faiss-gpu, when it fits the budget)
    extra="$(mktemp -d)"
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --target "$extra" \
        "${wheels[@]}" && site="$site:$extra"
fi
# the checkout first (its nnn), then the carried packages; bytecode is not written into .gpu_deps
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export NNN_PARITY_DIR="${NNN_PARITY_DIR:-$deps/parity/nnn_retrieval}"
export NNN_GPU_DEPS="$deps" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
echo "gpu_check.sh: $("$py" -V 2>&1) ($(command -v "$py" || echo "$py")), deps $deps"
exec "$py" "$repo/benchmarks/gpu_check.py" "$@"
