#!/usr/bin/env bash
# A gallery larger than the memory its processes may use: NNN biases and the folded vectors of a
# synthetic N x 512 gallery (default 4,000,000 rows, 8.2 GB) computed by `nnn-index shards` +
# `nnn-index merge --folded-out` inside a memory cgroup of LIMIT_GIB (default 3 GiB, page cache
# included), then checked outside it: the biases of 2,000 random rows against an independent
# NNN fit on those rows alone, and their folded rows against [g, -b].
#
# The limit must still hold what the jobs themselves work with: each of the 2 shard workers keeps
# its chunk, the references and a 512 MiB GEMM block (about 0.8 GB; at 1 GiB they are killed).
# Needs root and a cgroup memory controller (v1 or v2). The FAISS flat index itself is not built:
# it would hold all N x 513 floats in RAM; the folded .npy is what an on-disk index is built from.
#
#   sudo N=4000000 LIMIT_GIB=3 WORK=/tmp/nnn_out_of_core bash benchmarks/bench_index_out_of_core.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="$repo/.venv/bin/python"
W=${WORK:-/tmp/nnn_out_of_core}; N=${N:-4000000}; LIMIT_GIB=${LIMIT_GIB:-3}
mkdir -p "$W"
"$py" - <<PY
import sys; sys.path.insert(0, "benchmarks")
from pathlib import Path
from bench_index import write_unit
write_unit(Path("$W/g.npy"), $N, 512, 0); write_unit(Path("$W/r.npy"), 20000, 512, 1)
PY
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then      # cgroup v2
  CG=/sys/fs/cgroup/nnn_out_of_core; mkdir -p $CG
  echo $((LIMIT_GIB << 30)) > $CG/memory.max
  peak() { echo "$(( $(cat $CG/memory.peak) >> 20 )) MiB peak"; }
else                                                      # cgroup v1
  CG=/sys/fs/cgroup/memory/nnn_out_of_core; mkdir -p $CG
  echo $((LIMIT_GIB << 30)) > $CG/memory.limit_in_bytes
  peak() { echo "$(( $(cat $CG/memory.max_usage_in_bytes) >> 20 )) MiB peak, limit hit" \
    "$(cat $CG/memory.failcnt) times"; echo 0 > $CG/memory.max_usage_in_bytes; }
fi
trap 'rmdir $CG 2>/dev/null || true' EXIT
sync; echo 1 > /proc/sys/vm/drop_caches
rm -rf "$W/sh" "$W/b.npy" "$W/f.npy"
in_cgroup() { bash -c "echo \$\$ > $CG/cgroup.procs; exec /usr/bin/time -f '%e s wall, max RSS %M KiB, exit %x' $*"; }
echo "gallery $N x 512 ($(du -h "$W/g.npy" | cut -f1)), cgroup limit $LIMIT_GIB GiB, $(date -u +%FT%RZ)"
in_cgroup "$py" -m nnn.index_cli --quiet shards --gallery "$W/g.npy" --refs "$W/r.npy" \
  --num-shards 8 --out "$W/sh" --k 16 --launcher joblib --jobs 2 --threads 1
echo "shards: $(peak)"
in_cgroup "$py" -m nnn.index_cli --quiet merge --shards "$W/sh" --gallery "$W/g.npy" \
  --refs "$W/r.npy" --biases-out "$W/b.npy" --folded-out "$W/f.npy"
echo "merge: $(peak)"
"$py" - <<PY
import numpy as np
from nnn.methods import NNN
g = np.load("$W/g.npy", mmap_mode="r"); r = np.load("$W/r.npy"); b = np.load("$W/b.npy")
f = np.load("$W/f.npy", mmap_mode="r")
rows = np.sort(np.random.default_rng(5).choice(len(g), 2000, replace=False))
want = NNN(k=16, alpha=0.75, progress=False).fit(np.ascontiguousarray(g[rows]), query_bank=r).bias_
print(f"{len(g)} rows; max |bias - independent fit| on 2,000 rows: {np.abs(b[rows] - want).max():.2e}; "
      f"folded rows == [g, -b]: {bool((f[rows, :512] == g[rows]).all() and (f[rows, 512] == -b[rows]).all())}")
PY
[[ -n "${KEEP:-}" ]] || rm -rf "$W"
