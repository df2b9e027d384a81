"""The goals table: each aim of the service gets a status from the numbers of one run."""

from __future__ import annotations

from pathlib import Path

from bench.config import BenchConfig
from bench.llm_compare import LlmResults, SystemRuns
from bench.metrics import RequestRecord, RunSummary, summarize
from bench.report import Results, goals


def _run(*, tokens: int, seconds: float, tpot_ms: float) -> RunSummary:
    """One request of `tokens` tokens taking `seconds`, its tokens `tpot_ms` apart after the first."""
    first = seconds - (tokens - 1) * tpot_ms / 1000
    chunks = [first + i * tpot_ms / 1000 for i in range(tokens)]
    return summarize([RequestRecord(sent=0.0, chunk_times=chunks, end=seconds, output_tokens=tokens)])


def _system(key: str, *, one_s: float, many_s: float, tpot_ms: float) -> SystemRuns:
    return SystemRuns(
        key=key,
        label=key,
        sequential=_run(tokens=64, seconds=1.0, tpot_ms=tpot_ms),
        one_at_a_time=_run(tokens=64, seconds=one_s, tpot_ms=tpot_ms),
        concurrent=_run(tokens=64, seconds=many_s, tpot_ms=tpot_ms),
    )


def _rows(
    systems: dict[str, SystemRuns], *, ceiling: dict[int, float], head_to_head: list[tuple[float, float]] | None = None
) -> dict[str, list[str]]:
    cfg = BenchConfig(prefix="t", models_dir=Path("."), log_dir=Path("."))
    llm = LlmResults(systems=systems, libllama_batched=ceiling, head_to_head=head_to_head or [])
    table = goals(Results(llm=llm), cfg)
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[1]] = cells[2:]
    return rows


def test_batched_scaling_is_judged_against_the_ceiling_of_the_same_run() -> None:
    # (c4b): 64 tokens in 1.0 s alone, in 0.7 s four at a time: 1.43x; ceiling 1.5x, so 0.9x is 1.35.
    systems = {"c4b": _system("c4b", one_s=1.0, many_s=0.7, tpot_ms=10.0)}
    row = _rows(systems, ceiling={1: 100.0, 4: 150.0})["output tok/s at 4 concurrent ÷ at 1"]
    assert row[0] == "(c4b) 1.43"
    assert "= 1.35" in row[1]
    assert row[2] == "**met**"
    slower = {"c4b": _system("c4b", one_s=1.0, many_s=0.8, tpot_ms=10.0)}  # 1.25x
    assert _rows(slower, ceiling={1: 100.0, 4: 150.0})["output tok/s at 4 concurrent ÷ at 1"][2] == "**missed**"


def test_llama_server_rows_compare_aggregate_tok_s_and_tpot() -> None:
    systems = {
        "c": _system("c", one_s=1.0, many_s=1.0, tpot_ms=11.0),
        "c4b": _system("c4b", one_s=1.0, many_s=0.8, tpot_ms=11.0),
        "d": _system("d", one_s=1.0, many_s=0.64, tpot_ms=10.0),
    }
    rows = _rows(systems, ceiling={1: 100.0, 4: 150.0})
    aggregate = rows["output tok/s at 4 concurrent, (c4b) ÷ (d)"]
    assert aggregate[0] == "0.80 (80.0 ÷ 100.0)"
    assert aggregate[2] == "**missed**"
    tpot = rows["TPOT one stream, (c) ÷ (d)"]
    assert tpot[0] == "ratio of p50s 1.100"
    assert tpot[2] == "**missed**"
    systems["c"] = _system("c", one_s=1.0, many_s=1.0, tpot_ms=10.2)
    systems["c4b"] = _system("c4b", one_s=1.0, many_s=0.5, tpot_ms=10.2)
    rows = _rows(systems, ceiling={1: 100.0, 4: 150.0})
    assert rows["output tok/s at 4 concurrent, (c4b) ÷ (d)"][2] == "**met**"
    assert rows["TPOT one stream, (c) ÷ (d)"][2] == "**met**"


def test_the_aggregate_goal_reads_the_alternating_rounds_when_there_are_some() -> None:
    systems = {
        "c4b": _system("c4b", one_s=1.0, many_s=0.8, tpot_ms=11.0),
        "d": _system("d", one_s=1.0, many_s=0.64, tpot_ms=10.0),
    }
    # Round ratios 1.10, 0.90, 1.05: median 1.05 beats llama-server though the separate runs (0.80) do not.
    rounds = [(110.0, 100.0), (90.0, 100.0), (105.0, 100.0)]
    aggregate = _rows(systems, ceiling={1: 100.0, 4: 150.0}, head_to_head=rounds)[
        "output tok/s at 4 concurrent, (c4b) ÷ (d)"
    ]
    assert aggregate[0].startswith("1.05, median of 3 alternating rounds (1.10 0.90 1.05)")
    assert aggregate[0].endswith("runs minutes apart: 0.80 (80.0 ÷ 100.0)")
    assert aggregate[2] == "**met**"
    behind = [(95.0, 100.0), (99.0, 100.0), (120.0, 100.0)]
    assert (
        _rows(systems, ceiling={1: 100.0, 4: 150.0}, head_to_head=behind)["output tok/s at 4 concurrent, (c4b) ÷ (d)"][
            2
        ]
        == "**missed**"
    )


def test_no_llama_server_rows_when_it_was_skipped() -> None:
    systems = {
        "c4b": _system("c4b", one_s=1.0, many_s=0.8, tpot_ms=11.0),
        "d": SystemRuns(key="d", label="d", skipped="not installed"),
    }
    rows = _rows(systems, ceiling={1: 100.0, 4: 150.0})
    assert not any("(d)" in what for what in rows)
