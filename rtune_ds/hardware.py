"""What the hardware runs fast. bf16 halves memory traffic where the CPU or GPU computes in it
natively (AMX or AVX512-BF16 on x86, Ampere and later on CUDA); where it is emulated (AVX2-only
CPUs) a step runs ~12x slower than in fp32, so `train.precision: auto` takes bf16 only on the
first kind. The answer comes with the reason, recorded in each run's summary and lineage."""
from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# "1" / "0": take this answer instead of the hardware's (to run the other path on one machine)
FORCE_NATIVE_BF16 = "RTUNE_NATIVE_BF16"


def cpu_info() -> dict[str, str | set[str]]:
    """The CPU's model name and feature flags, as /proc/cpuinfo reports them for its first core
    (Linux; elsewhere the platform's processor name and no flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    first: dict[str, str] = {}
    for key, _, value in (line.partition(":") for line in text.splitlines()):
        first.setdefault(key.strip(), value.strip())
    return {"model": first.get("model name") or platform.processor() or "unknown",
            "flags": set(first.get("flags", "").split())}


@cache
def native_bf16() -> tuple[bool, str]:
    """(does this machine compute bf16 natively, why we say so)."""
    forced = os.environ.get(FORCE_NATIVE_BF16, "")
    if forced in ("0", "1"):
        return forced == "1", f"{FORCE_NATIVE_BF16}={forced}"
    import torch

    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native, (f"GPU {torch.cuda.get_device_name()} "
                        f"{'has' if native else 'lacks'} native bf16")
    cpu = cpu_info()
    found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in cpu["flags"]]
    if found:
        return True, f"CPU {cpu['model']} has {' and '.join(found)}"
    return False, (f"CPU {cpu['model']} has neither {' nor '.join(NATIVE_BF16_CPU_FLAGS)} "
                   "(bf16 would be emulated)")
