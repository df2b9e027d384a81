from __future__ import annotations

import pytest

from orchestration.errors import NotEnoughModels, UnknownMode
from orchestration.team import Cast, cast_for
from tests.orchestration.harness import team


def cast(
    mode: str,
    *models: str,
    task_type: str | None = None,
    assignments: dict[str, str] | None = None,
    reconcile_target: str = "primary",
    synthesis_target: str = "primary",
    pipeline_stages: tuple[str, ...] = ("draft", "refine", "validate"),
    max_debaters: int = 0,
) -> Cast:
    return cast_for(
        team(*models, assignments=assignments),
        mode=mode,
        task_type=task_type,
        reconcile_target=reconcile_target,
        synthesis_target=synthesis_target,
        pipeline_stages=pipeline_stages,
        max_debaters=max_debaters,
    )


@pytest.mark.parametrize(("mode", "needed"), [("critique", 2), ("debate", 2), ("ensemble", 2), ("pipeline", 2)])
def test_modes_refuse_too_few_models(mode: str, needed: int) -> None:
    with pytest.raises(NotEnoughModels) as caught:
        cast(mode, "phi-4")
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value) and f"at least {needed}" in str(caught.value)


def test_single_needs_one_model_and_unknown_modes_fail() -> None:
    with pytest.raises(NotEnoughModels):
        cast("single")
    assert cast("single", "llama-3.2-3b", "phi-4").steps == {"single": "phi-4"}
    with pytest.raises(UnknownMode):
        cast("vote", "phi-4", "llama-3.2-3b")


def test_critique_generator_by_task_and_a_different_thinker_critic() -> None:
    assert cast("critique", "deepseek-r1-7b", "qwen2.5-7b").steps == {
        "generator": "qwen2.5-7b",
        "critic": "deepseek-r1-7b",
    }
    assert cast("critique", "phi-4", "qwen2.5-7b", task_type="code").steps == {
        "generator": "qwen2.5-7b",
        "critic": "phi-4",
    }
    assert cast("critique", "phi-4", "phi-3-medium-128k", task_type="document").steps == {
        "generator": "phi-3-medium-128k",
        "critic": "phi-4",
    }


def test_critique_preset_assignments_win_when_loaded() -> None:
    preset = {"generator": "phi-3-medium-128k", "critic": "phi-4"}
    assert cast("critique", "phi-4", "phi-3-medium-128k", assignments=preset).steps == preset
    # The critic named is not loaded: another model critiques, never the generator.
    chosen = cast("critique", "phi-3-medium-128k", "llama-3.2-3b", assignments=preset).steps
    assert chosen == {"generator": "phi-3-medium-128k", "critic": "llama-3.2-3b"}


def test_debate_takes_every_model_and_a_reconciler_by_role() -> None:
    everyone = ("llama-3.2-3b", "phi-4", "qwen2.5-7b", "deepseek-r1-7b", "phi-3-medium-128k")
    chosen = cast("debate", *everyone, reconcile_target="thinker")
    assert sorted(chosen.participants) == sorted(everyone)
    # Fast-only models speak last.
    assert chosen.participants[-1] == "llama-3.2-3b"
    assert chosen.steps == {"reconciler": "deepseek-r1-7b"}
    assert cast("debate", "phi-4", "deepseek-r1-7b", reconcile_target="deepseek-r1-7b").steps == {
        "reconciler": "deepseek-r1-7b"
    }
    preset = cast("debate", "phi-4", "deepseek-r1-7b", assignments={"reconciler": "phi-4"}, reconcile_target="thinker")
    assert preset.steps == {"reconciler": "phi-4"}


def test_a_debate_cap_keeps_reasoning_models_and_never_drops_below_two() -> None:
    everyone = ("llama-3.2-3b", "phi-4", "qwen2.5-7b", "deepseek-r1-7b", "phi-3-medium-128k")
    assert cast("debate", *everyone, max_debaters=3).participants == ["phi-4", "qwen2.5-7b", "deepseek-r1-7b"]
    assert cast("debate", *everyone, max_debaters=1).participants == ["phi-4", "qwen2.5-7b"]
    assert len(cast("debate", *everyone, max_debaters=9).participants) == 5


def test_ensemble_everyone_answers_and_the_synthesizer_follows_the_setting() -> None:
    chosen = cast("ensemble", "llama-3.2-3b", "deepseek-r1-7b", "phi-4", "qwen2.5-7b", synthesis_target="primary")
    assert chosen.participants == ["llama-3.2-3b", "deepseek-r1-7b", "phi-4", "qwen2.5-7b"]
    assert chosen.steps == {"synthesizer": "phi-4"}


def test_pipeline_roles_and_stages() -> None:
    full = cast("pipeline", "phi-4", "qwen2.5-7b", "llama-3.2-3b", task_type="code")
    assert full.steps == {"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b", "validator": "phi-4"}
    assert full.stages == ["draft", "refine", "validate"]
    analysis = cast("pipeline", "phi-4", "qwen2.5-7b", "llama-3.2-3b", "deepseek-r1-7b")
    assert analysis.steps["refiner"] == "deepseek-r1-7b"
    two = cast("pipeline", "phi-4", "llama-3.2-3b")
    assert two.stages == ["draft", "validate"]
    assert two.steps == {"drafter": "llama-3.2-3b", "validator": "phi-4"}
    no_fast = cast("pipeline", "phi-4", "deepseek-r1-7b")
    assert no_fast.steps == {"drafter": "deepseek-r1-7b", "validator": "phi-4"}
    two_stages = cast("pipeline", "qwen2.5-7b", "llama-3.2-3b", pipeline_stages=("draft", "refine"))
    assert two_stages.stages == ["draft", "refine"]


def test_pipeline_preset_runs_the_stages_it_assigns() -> None:
    d1 = {"drafter": "llama-3.2-3b", "validator": "phi-4"}
    chosen = cast("pipeline", "phi-4", "qwen2.5-7b", "llama-3.2-3b", assignments=d1)
    assert chosen.stages == ["draft", "validate"] and chosen.steps == d1
    d5 = {"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b"}
    assert cast("pipeline", "qwen2.5-7b", "llama-3.2-3b", assignments=d5).stages == ["draft", "refine"]
    # The assigned validator is down: another loaded model validates.
    t1 = {"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b", "validator": "phi-4"}
    chosen = cast("pipeline", "qwen2.5-7b", "llama-3.2-3b", "deepseek-r1-7b", assignments=t1)
    assert chosen.steps == {"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b", "validator": "deepseek-r1-7b"}
