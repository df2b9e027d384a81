"""llama.cpp's own tools run with the worker's weight layout unless told otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import ceilings
from bench.ceilings import LlamaTools

TOOLS = LlamaTools(server=Path("/x/llama-server"), batched_bench=Path("/x/llama-batched-bench"), bench=Path("/x/b"))


@pytest.fixture
def argvs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="[]", stderr="")

    monkeypatch.setattr(ceilings.subprocess, "run", run)
    return seen


@pytest.mark.parametrize("repack", [True, False])
def test_tools_follow_the_workers_layout(argvs: list[list[str]], monkeypatch: pytest.MonkeyPatch, repack: bool) -> None:
    monkeypatch.setattr(ceilings, "repack_weights", lambda: repack)
    ceilings.run_llama_bench(TOOLS, Path("m.gguf"), threads=2, generate=8)
    ceilings.run_batched_bench(TOOLS, Path("m.gguf"), threads=2, sequences=(1, 4), prompt=8, generate=8)
    bench, batched = argvs
    assert bench[bench.index("--repack") + 1] == ("1" if repack else "0")
    assert ("--no-repack" in batched) is not repack


def test_llama_bench_can_be_asked_for_the_repacked_layout(
    argvs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ceilings, "repack_weights", lambda: False)
    ceilings.run_llama_bench(TOOLS, Path("m.gguf"), threads=2, generate=8, repack=True)
    assert argvs[0][argvs[0].index("--repack") + 1] == "1"
