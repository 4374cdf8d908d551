#!/usr/bin/env bash
# Install the authors' reference implementation (PyPI nnn-retrieval 1.0.1) into a private folder
# for the parity test and the benchmarks. It ships an import package named `nnn`, which clashes
# with ours, so it must never go into the project's environment: it is installed with --no-deps
# into DIR and used only from a subprocess with PYTHONPATH=DIR.
#
# Usage: bash .ci/install_parity.sh [DIR]     (default: <repo>/.parity/nnn_retrieval, git-ignored)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${NNN_PARITY_DIR:-$repo/.parity/nnn_retrieval}}"
pip_cmd=("$repo/.venv/bin/python" -m pip)
[[ -x "$repo/.venv/bin/python" ]] || pip_cmd=(python3 -m pip)
mkdir -p "$dir"
"${pip_cmd[@]}" install --quiet --no-deps --upgrade --target "$dir" "nnn-retrieval==1.0.1"
echo "nnn-retrieval 1.0.1 installed in $dir (use with PYTHONPATH=$dir from a subprocess)"
