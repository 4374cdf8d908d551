#!/usr/bin/env bash
# Build .gpu_deps/ (git-ignored): what the GPU machine lacks for benchmarks/gpu_check.sh, as
# pure-Python packages installed here and carried there (it has no network).
#
#   .gpu_deps/site/                   hydra-core, omegaconf, antlr4 runtime, open_clip_torch and
#                                     its pure deps that the machine lacks (ftfy, wcwidth); put on
#                                     PYTHONPATH by gpu_check.sh
#   .gpu_deps/parity/nnn_retrieval/   the authors' nnn-retrieval 1.0.1 (import name `nnn`, so it
#                                     lives in its own folder, used only from a subprocess)
#   .gpu_deps/faiss_gpu_wheel.json    the faiss-gpu wheel for the machine's Python, with its size
#                                     and whether it fit the budget; the wheel itself, if it fit
#   .gpu_deps/manifest.txt            pinned versions, Python the wheels are for, total size
#
# The GPU machine (benchmarks/RESULTS.md, "GPU check"; KINDS.md of the device tool) has torch,
# torchvision, timm, transformers, lightning, huggingface_hub, safetensors, regex, PyYAML,
# filelock, tqdm, scipy, psutil, pillow and pytest: they are not carried (regex and PyYAML are
# compiled; carrying them would tie the folder to one Python). Everything carried here must be
# pure Python: the script fails if a compiled file (.so) lands in the folder.
#
# Usage: bash benchmarks/gpu_deps.sh [DIR]   (default <repo>/.gpu_deps; needs PyPI access)
#   GPU_PYTHON=3.12   Python version of the GPU machine (for the faiss-gpu wheel only)
#   GPU_DEPS_FAISS=0  skip downloading the faiss-gpu wheel (its size is then "not measured")
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo/.gpu_deps}"
py="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$py" ]] || py=python3
gpu_python="${GPU_PYTHON:-3.12}"
budget_mib=60

SITE_PINS=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
           open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
PARITY_PIN=nnn-retrieval==1.0.1
FAISS_GPU_PIN=faiss-gpu-cu12==1.14.1.post1

tmp="$(mktemp -d "${dest%/}.tmp.XXXXXX")"
dl="$(mktemp -d)"
trap 'rm -rf "$tmp" "$dl"' EXIT
pip_install=("$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile)
"${pip_install[@]}" --target "$tmp/site" "${SITE_PINS[@]}"
"${pip_install[@]}" --target "$tmp/parity/nnn_retrieval" "$PARITY_PIN"
rm -rf "$tmp/site/bin" "$tmp/parity/nnn_retrieval/bin"
# wcwidth ships an optional C accelerator and falls back to its pure-Python code without it
rm -f "$tmp"/site/wcwidth/_wcwidth_c*.so

compiled="$(find "$tmp" -name '*.so' -o -name '*.pyd' | head -5)"
if [[ -n "$compiled" ]]; then
    echo "gpu_deps.sh: compiled files would not run on the GPU machine's Python: $compiled" >&2
    exit 1
fi

mib() { du -sm "$1" | cut -f1; }
used="$(mib "$tmp")"
faiss_json="$tmp/faiss_gpu_wheel.json"
if [[ "${GPU_DEPS_FAISS:-1}" == 0 ]]; then
    echo "{\"pin\": \"$FAISS_GPU_PIN\", \"measured\": false, \"carried\": false, \"reason\": \"GPU_DEPS_FAISS=0\"}" >"$faiss_json"
else
    # the wheel is downloaded and measured; the CUDA runtime wheels it requires are resolved by
    # pip (--dry-run, no download) and measured by the Content-Length of their files
    "$py" - "$FAISS_GPU_PIN" "$gpu_python" "$dl" "$tmp" "$budget_mib" "$used" >"$faiss_json" <<'PY'
import glob, json, os, shutil, subprocess, sys, tempfile, urllib.request, zipfile

pin, pyver, dl, dest, budget, used = sys.argv[1:7]
platform = ["--python-version", pyver, "--implementation", "cp", "--only-binary=:all:"]
for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
            "manylinux2014_x86_64", "manylinux1_x86_64"):
    platform += ["--platform", tag]
pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
info = {"pin": pin, "python": pyver, "measured": False, "carried": False}
try:
    subprocess.run(pip + ["download", "--no-deps", "-d", dl, *platform, pin], check=True,
                   capture_output=True, timeout=600)
    wheel = glob.glob(os.path.join(dl, "*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needs = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
             if ln.startswith("Requires-Dist:") and "extra ==" not in ln
             and ln.split(":", 1)[1].strip().startswith("nvidia-")]
    deps = {}
    for req in needs:
        with tempfile.TemporaryDirectory() as t:
            report = os.path.join(t, "report.json")
            subprocess.run(pip + ["install", "--dry-run", "--ignore-installed", "--no-deps",
                                  "--target", os.path.join(t, "x"), "--report", report,
                                  *platform, req], check=True, capture_output=True, timeout=600)
            item = json.load(open(report))["install"][0]
        url = item["download_info"]["url"]
        head = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60)
        name_version = "-".join(os.path.basename(url).split("-")[:2])
        deps[name_version] = int(head.headers["Content-Length"])
    size = os.path.getsize(wheel)
    total = size + sum(deps.values())
    mib = lambda b: (b + 2**20 - 1) // 2**20
    left = int(budget) - int(used)
    info.update(wheel=os.path.basename(wheel), bytes=size, mib=mib(size), cuda_deps=deps,
                total_mib=mib(total), measured=True)
    if mib(total) <= left:
        wheels = os.path.join(dest, "wheels")
        os.makedirs(wheels, exist_ok=True)
        shutil.copy(wheel, wheels)
        subprocess.run(pip + ["download", "--no-deps", "-d", wheels, *platform, *needs],
                       check=True, capture_output=True, timeout=600)
        info.update(carried=True, reason=f"{mib(total)} MiB with its CUDA wheels fits")
    else:
        listed = ", ".join(f"{name} {mib(b)} MiB" for name, b in deps.items())
        info["reason"] = (f"{mib(size)} MiB, {mib(total)} MiB with the CUDA wheels it needs "
                          f"({listed}) > the {left} MiB left of the {budget} MiB budget")
except Exception as e:  # recorded, not fatal: the check then says the size is unknown
    info["reason"] = f"could not measure: {type(e).__name__}: {e}"[:300]
print(json.dumps(info))
PY
fi

{
    echo "built $(date -u +%FT%TZ) by benchmarks/gpu_deps.sh with $("$py" -V 2>&1)"
    echo "site: ${SITE_PINS[*]}"
    echo "parity: $PARITY_PIN"
    echo "faiss-gpu: $(cat "$faiss_json")"
} >"$tmp/manifest.txt"

total="$(mib "$tmp")"
if (( total > budget_mib )); then
    echo "gpu_deps.sh: $tmp is ${total} MiB, over the ${budget_mib} MiB budget" >&2
    exit 1
fi
rm -rf "$dest"
mv "$tmp" "$dest"
echo "total ${total} MiB" >>"$dest/manifest.txt"
cat "$dest/manifest.txt"
echo "$dest: ${total} MiB (budget ${budget_mib} MiB); carry it as .gpu_deps"
