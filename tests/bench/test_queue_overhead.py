"""The sequential phase of the queue benchmark, which alternates transports block by block."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bench import queue_overhead
from bench.config import BenchConfig
from bench.cpu import CpuUse
from bench.metrics import RequestRecord


def _sender(delay_s: float) -> Callable[[int], Coroutine[Any, Any, RequestRecord]]:
    async def send(_: int) -> RequestRecord:
        record = RequestRecord(sent=time.perf_counter())
        await asyncio.sleep(delay_s)
        record.chunk_times.append(time.perf_counter())
        record.end = time.perf_counter()
        return record

    return send


async def _measured_once(measure: Callable[[int], Awaitable[Any]], **_: object) -> tuple[Any, CpuUse]:
    return await measure(1), CpuUse(wall_s=1.0, cores={}, foreign=0.0)


def test_each_transport_rate_counts_only_its_own_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU meter's redo-when-busy would only slow this down: the rates are what is checked.
    monkeypatch.setattr(queue_overhead, "unskewed", _measured_once)
    cfg = BenchConfig(prefix="t", models_dir=tmp_path, log_dir=tmp_path, null_sequential=12)
    paths = [queue_overhead._Path(transport=name, url="", pids={}) for name in ("fast", "slow")]
    send_for = {"fast": _sender(0.001), "slow": _sender(0.03)}
    loads = asyncio.run(queue_overhead._sequential(paths, send_for, cfg, log=lambda _: None))
    rates = {load.transport: load.summary.requests_per_s for load in loads}
    # Over the whole phase's wall time both would show the same rate; each alone, ~30x apart.
    assert rates["fast"] > 5 * rates["slow"], rates
    assert all(load.summary.ok == 12 for load in loads)
