"""One line naming the machine a benchmark ran on: date, CPU model and the flags that decide
which GEMM is fast (AVX2, AVX-512, bfloat16/float16 units, AMX), threads and load.

    from machine import describe        # benchmarks/ is on sys.path when a script runs from it
"""

from __future__ import annotations

import datetime
import os
import platform

#: the /proc/cpuinfo flags that choose the fast GEMM kernels
GEMM_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "amx_fp16")


def cpu_info() -> dict:
    """{"model": name, "family": str, "model_number": str, "flags": [GEMM_FLAGS present]} of CPU 0
    (Linux; elsewhere the model from ``platform`` and no flags)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                                           # the first CPU only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.processor() or "unknown CPU"),
            "family": fields.get("cpu family", "?"), "model_number": fields.get("model", "?"),
            "flags": [f for f in GEMM_FLAGS if f in flags]}


def describe() -> str:
    """Date (UTC), CPU model (family/model), GEMM flags, CPUs, torch threads, load average."""
    import torch  # here, so that cpu_info() needs no torch

    cpu = cpu_info()
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu['model']} "
            f"(family {cpu['family']} model {cpu['model_number']}; {' '.join(cpu['flags'])}), "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
            "threads); load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
