"""The DAG preview: the real planner's first decision, and the longest path its flows allow."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.errors import NotEnoughModels
from orchestration.preview import preview_dag
from presets.active import ActiveConfig, build_active
from presets.registry import load_registry
from presets.settings import Settings
from tests.orchestration.harness import Harness, team

ALL_FIVE = ("phi-4", "deepseek-r1-7b", "qwen2.5-7b", "llama-3.2-3b", "phi-3-medium-128k")


def _active(config: str) -> ActiveConfig:
    return build_active(load_registry(models_dir=Path("/nonexistent")), config=config)


def test_p3_debates_with_all_five_for_max_rounds(settings: Settings) -> None:
    preview = preview_dag(_active("P3"), settings=settings)
    assert sorted(preview.plan.cast.participants) == sorted(ALL_FIVE)
    assert preview.max_rounds == 3
    names = [step.name for step in preview.steps]
    assert names == [f"debate.r{r}.m{m}" for r in (1, 2, 3) for m in range(5)] + ["debate.reconcile"]
    reconcile = preview.steps[-1]
    assert reconcile.streamed and reconcile.model == "phi-4"
    assert reconcile.after == tuple(f"debate.r3.m{m}" for m in range(5))
    assert preview.first == tuple(f"debate.r1.m{m}" for m in range(5))


def test_debate_cap_shows_in_the_plan(settings: Settings) -> None:
    capped = settings.model_copy(update={"debate_max_participants": 3, "debate_max_rounds": 1})
    preview = preview_dag(_active("P3"), settings=capped)
    assert len(preview.plan.cast.participants) == 3
    assert [step.name for step in preview.steps] == ["debate.r1.m0", "debate.r1.m1", "debate.r1.m2", "debate.reconcile"]


def test_critique_runs_to_max_rounds_between_the_preset_models(settings: Settings) -> None:
    preview = preview_dag(_active("D2"), settings=settings)
    assert [(s.name, s.model, s.after) for s in preview.steps] == [
        ("r1.gen", "phi-4", ()),
        ("r1.critique", "qwen2.5-7b", ("r1.gen",)),
        ("r2.revise", "phi-4", ("r1.critique",)),
        ("r2.critique", "qwen2.5-7b", ("r2.revise",)),
    ]


def test_pipeline_ends_with_the_fix_when_the_validator_never_passes(settings: Settings) -> None:
    preview = preview_dag(_active("T1"), settings=settings)
    assert [(s.name, s.model) for s in preview.steps] == [
        ("pipeline.draft", "llama-3.2-3b"),
        ("pipeline.refine", "qwen2.5-7b"),
        ("pipeline.validate", "phi-4"),
        ("pipeline.fix", "qwen2.5-7b"),
    ]
    assert [s.streamed for s in preview.steps] == [False, False, False, True]


def test_a_request_mode_other_than_the_presets_derives_its_steps(settings: Settings) -> None:
    preview = preview_dag(_active("P3"), settings=settings, mode="pipeline", task_type="code")
    assert preview.plan.cast.steps == {"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b", "validator": "phi-4"}
    with pytest.raises(NotEnoughModels):
        preview_dag(_active("S1"), settings=settings, mode="debate")


async def test_preview_first_steps_are_what_the_front_queues(dag: Harness, settings: Settings) -> None:
    preview = preview_dag(_active("P3"), settings=settings)
    await dag.start("debate", team(*ALL_FIVE, assignments={"reconciler": "phi-4"}))
    queued = await dag.take()
    assert [(j.step, j.model) for j in queued] == [(s.name, s.model) for s in preview.steps[:5]]
