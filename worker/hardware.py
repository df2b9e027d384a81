"""What the CPU can do, for the choices llama.cpp cannot make safely by itself.

llama.cpp repacks weights into "extra" CPU buffer types (AMX tiles on Intel Sapphire Rapids
and later, interleaved blocks for AVX2/NEON elsewhere). Its AMX path crashes at the first
decode on Sapphire Rapids (SIGSEGV in ggml_backend_amx_mul_mat) and measured no faster there,
so on a CPU with AMX the extra buffer types are off; elsewhere they stay on (they are the fast path).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

ExtraBuffers = Literal["auto", "on", "off"]
_AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (x86 `flags`, arm64 `Features`); empty where unknown."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_amx(flags: frozenset[str]) -> bool:
    return bool(flags & _AMX_FLAGS)


def use_extra_buffers(setting: ExtraBuffers, *, flags: frozenset[str] | None = None) -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types."""
    if setting != "auto":
        return setting == "on"
    return not has_amx(cpu_flags() if flags is None else flags)
