"""The benchmark's arithmetic: percentiles, TPOT, ITL, throughput, token counts."""

from __future__ import annotations

import math

import pytest

from bench.ceilings import parse_batched_bench
from bench.loadgen import completion_tokens, poisson_schedule
from bench.metrics import (
    RequestRecord,
    Spread,
    paired_tpot_ratios,
    paired_ttft_overheads,
    percentile,
    summarize,
    tpot_ms,
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]  # order must not matter
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    # rank (4 - 1) * 0.95 = 2.85: 30 + 0.85 * (40 - 30)
    assert percentile(values, 95) == pytest.approx(38.5)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_p99_only_from_enough_samples() -> None:
    assert Spread.of([1.0] * 99).p99 is None
    hundred = Spread.of([float(v) for v in range(1, 101)])
    assert hundred.p99 == pytest.approx(99.01)
    assert hundred.text() == "50.5 / 95.0 / 99.0"


def test_tpot_excludes_the_first_token() -> None:
    # 1000 ms in all, first token at 100 ms, 10 tokens: 9 gaps share 900 ms.
    assert tpot_ms(latency_ms=1000.0, ttft_ms=100.0, output_tokens=10) == pytest.approx(100.0)
    assert tpot_ms(latency_ms=1000.0, ttft_ms=100.0, output_tokens=1) is None


def record(sent: float, chunks: list[float], end: float, tokens: int) -> RequestRecord:
    return RequestRecord(sent=sent, chunk_times=chunks, end=end, output_tokens=tokens)


def test_summary_of_two_requests() -> None:
    first = record(0.0, [0.1, 0.2, 0.4], 0.5, 3)
    second = record(1.0, [1.3, 1.4], 1.5, 2)
    failed = RequestRecord(sent=0.5, end=0.6, error="HTTP 500")
    summary = summarize([first, second, failed])
    assert (summary.ok, summary.failed) == (2, 1)
    assert first.ttft_ms == pytest.approx(100.0)
    assert first.itls_ms() == pytest.approx([100.0, 200.0])
    assert summary.ttft.p50 == pytest.approx(200.0)  # 100 and 300 ms
    # TPOT: (500 - 100) / 2 = 200 and (500 - 300) / 1 = 200
    assert summary.tpot.p50 == pytest.approx(200.0)
    assert summary.itl.n == 3
    assert summary.latency.p95 == pytest.approx(500.0)
    # 5 tokens from the first send (0.0) to the last end (1.5)
    assert summary.duration_s == pytest.approx(1.5)
    assert summary.tokens_per_s == pytest.approx(5 / 1.5)
    assert summary.requests_per_s == pytest.approx(2 / 1.5)
    # Interleaved with another system's requests: only their own 0.5 s each count.
    assert summarize([first, second], serial=True).tokens_per_s == pytest.approx(5 / 1.0)


def test_pairs_compare_the_same_prompt_and_skip_failures() -> None:
    floor = [record(0.0, [0.1, 0.2], 1.1, 11), record(0.0, [0.2, 0.3], 1.2, 11), record(0.0, [0.1], 0.2, 2)]
    other = [record(5.0, [5.112, 5.2], 6.212, 11), record(5.0, [5.21, 5.3], 6.41, 11), RequestRecord(sent=5.0)]
    assert paired_ttft_overheads(floor, other) == pytest.approx([12.0, 10.0])
    # TPOT 100 ms for both floor requests; 110 and 120 ms for the other system.
    assert paired_tpot_ratios(floor, other) == pytest.approx([1.1, 1.2])


def test_token_count_prefers_usage_then_the_length_limit() -> None:
    assert completion_tokens(usage=64, finish_reason="length", max_tokens=64, chunks=60) == 64
    assert completion_tokens(usage=None, finish_reason="length", max_tokens=64, chunks=61) == 64
    assert completion_tokens(usage=None, finish_reason="stop", max_tokens=64, chunks=12) == 12


def test_poisson_schedule_is_seeded_and_has_the_asked_rate() -> None:
    schedule = poisson_schedule(rate=50.0, requests=5000, seed=3)
    assert schedule == poisson_schedule(rate=50.0, requests=5000, seed=3)
    assert schedule[0] == 0.0 and schedule == sorted(schedule)
    assert len(schedule) / schedule[-1] == pytest.approx(50.0, rel=0.05)


def test_llama_batched_bench_table() -> None:
    output = """main: n_kv_max = 8192, n_batch = 2048, n_ubatch = 512
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    32 |     64 |    1 |     96 |    0.050 |   640.00 |    0.800 |    80.00 |    0.850 |   112.94 |
|    32 |     64 |    4 |    384 |    0.180 |   711.11 |    2.460 |   104.07 |    2.640 |   145.45 |
"""
    assert parse_batched_bench(output) == {1: 80.0, 4: 104.07}
    assert parse_batched_bench("no table here") == {}
