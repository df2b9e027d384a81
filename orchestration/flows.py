"""The flow object that takes a mode's decisions (see orchestration.dag.Flow)."""

from __future__ import annotations

from collections.abc import Mapping

from orchestration.dag import Advance, Decision, Flow, Plan, StepOrder, StepOutput
from orchestration.errors import UnknownMode
from orchestration.parallel import DebateFlow, EnsembleFlow
from orchestration.sequential import CritiqueFlow, PipelineFlow


class SingleFlow:
    """One model answers, streamed; no summary, as for a request without orchestration."""

    def first(self, plan: Plan) -> Advance:
        order = StepOrder(
            name="single",
            model=plan.cast.steps["single"],
            messages=plan.conversation,
            params=plan.answer_params(),
            final=True,
        )
        return Advance(steps=(order,))

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        return step, (step,)

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        raise AssertionError("a single-model DAG has no step after its answer")


def flow_for(mode: str) -> Flow:
    if mode == "critique":
        return CritiqueFlow()
    if mode == "debate":
        return DebateFlow()
    if mode == "ensemble":
        return EnsembleFlow()
    if mode == "pipeline":
        return PipelineFlow()
    if mode == "single":
        return SingleFlow()
    raise UnknownMode(mode)
