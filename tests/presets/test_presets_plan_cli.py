"""``python -m presets plan``: the DAG of a preset, printed without loading a model."""

from __future__ import annotations

import pytest

from presets.__main__ import main


def _steps(output: str) -> list[list[str]]:
    table = output.split("\n\n")[1].splitlines()[1:]
    return [line.split() for line in table]


def test_plan_of_the_five_model_debate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "P3"]) == 0
    output = capsys.readouterr().out
    assert "participants (5):" in output and "max rounds 3" in output
    rows = _steps(output)
    assert len(rows) == 16
    assert rows[-1][:2] == ["debate.reconcile", "phi-4"] and rows[-1][-1] == "yes"
    assert "models_used: phi-4, deepseek-r1-7b, qwen2.5-7b, phi-3-medium-128k, llama-3.2-3b" in output


def test_plan_follows_the_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INFERENCE_DEBATE_MAX_PARTICIPANTS", "2")
    monkeypatch.setenv("INFERENCE_DEBATE_MAX_ROUNDS", "1")
    assert main(["plan", "P3"]) == 0
    rows = _steps(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["debate.r1.m0", "debate.r1.m1", "debate.reconcile"]


def test_plan_with_a_request_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "D1", "--mode", "critique"]) == 0
    rows = _steps(capsys.readouterr().out)
    assert [row[:2] for row in rows][:2] == [["r1.gen", "phi-4"], ["r1.critique", "llama-3.2-3b"]]


def test_plan_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "S1", "--mode", "debate"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "at least 2" in error
    assert main(["plan", "Z9"]) == 2
