#!/usr/bin/env bash
# Wall time of each offline experiment command in docs/experiments.md ("Ablations: one command
# each", plus paper_table1 on synthetic data), default sizes, logger=none, one after the other.
#
#   bash benchmarks/time_ablations.sh                      # all, paper_table1 last (minutes)
#   bash benchmarks/time_ablations.sh ablation_alpha_k ablation_hubs
#   PYTHON=/path/to/python bash benchmarks/time_ablations.sh   (default: <repo>/.venv/bin/python)
#
# Prints one Markdown table row per command (wall seconds, CPU seconds, 1-minute load before it) after
# a line naming the machine, the date and the load: paste them into docs/experiments.md. Timings
# on a machine with other work running are inflated; measure on an idle one. Outputs go to a
# temporary folder that is removed at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
all=(ablation_alpha_k ablation_hubs ablation_reference_size ablation_backend
     ablation_ood_references paper_table1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

args_of() {  # the command line of docs/experiments.md for one experiment
    case "$1" in
        ablation_alpha_k | ablation_hubs) echo "experiment=$1" ;;
        ablation_reference_size | ablation_backend | ablation_ood_references) echo "-m experiment=$1" ;;
        paper_table1) echo "-m experiment=paper_table1 dataset=synthetic dataset@reference.dataset=synthetic,synthetic_shift" ;;
        *) echo "unknown experiment '$1'; choose from: ${all[*]}" >&2; return 1 ;;
    esac
}

load1() { cut -d' ' -f1 /proc/loadavg; }

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
for name in "${names[@]}"; do args_of "$name" > /dev/null; done  # fail before running anything

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
isa=$(grep -o -w -E 'avx2|avx512f|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), ${cpu:-unknown CPU} (${isa% }), $(nproc) cores;" \
     "uptime:$(uptime)"
echo "| command | wall (s) | CPU user+sys (s) | load before |"
echo "|---|---|---|---|"
TIMEFORMAT='%R %U %S'  # bash's time: wall, user and system seconds, children included
for name in "${names[@]}"; do
    read -r -a args <<< "$(args_of "$name")"
    before=$(load1)
    # the inner braces keep the command's output out of time's report
    if ! { time { (cd "$repo" && "$python" run.py "${args[@]}" logger=none \
                      "hydra.run.dir=$out/$name" "hydra.sweep.dir=$out/$name") \
                  > "$out/$name.log" 2>&1; }; } 2> "$out/$name.time"; then
        echo "$name failed; the end of its output:" >&2
        tail -n 20 "$out/$name.log" >&2
        exit 1
    fi
    read -r wall user sys < "$out/$name.time"
    printf '| `python run.py %s logger=none` | %.1f | %s | %s |\n' "${args[*]}" "$wall" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')" "$before"
done
