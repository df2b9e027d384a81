"""Critique and pipeline: one step at a time, each building on the one before.

critique (Self-Refine, Madaan et al. 2023): the generator answers (``r1.gen``); the
critic lists problems and scores the answer (``r1.critique``); below the threshold the
generator revises with that critique (``r2.revise``), which is critiqued in turn
(``r2.critique``), up to ``critique_max_rounds`` critiques. The answer is the version with
the best score, published by the DAG itself: every version is already written.

pipeline: the first stage answers the request, each later text stage refines the text
before it (``pipeline.draft`` -> ``pipeline.refine``), and a validate stage ends with a
verdict. On PASS the validated text is the answer; on FAIL (or an unreadable verdict) one
more refinement with the validator's reasons (``pipeline.fix``) writes the answer,
streamed. Without a validate stage the last text stage is the streamed answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestration import prompts
from orchestration.confidence import best_version, critique_confidence, pipeline_confidence
from orchestration.dag import Advance, Conclude, Decision, Plan, StepOrder, StepOutput, models_in_order
from orchestration.parsing import parse_score, parse_verdict
from orchestration.team import STAGE_STEP
from worker.protocol import Summary

# Float rounding must not turn 8/10 against a 0.8 threshold into a miss.
_EPSILON = 1e-9


def _round_of(step: str) -> tuple[int, str]:
    head, _, kind = step.partition(".")
    return int(head.removeprefix("r")), kind


class CritiqueFlow:
    @staticmethod
    def _version_step(round_no: int) -> str:
        return "r1.gen" if round_no == 1 else f"r{round_no}.revise"

    def first(self, plan: Plan) -> Advance:
        order = StepOrder(
            name="r1.gen", model=plan.cast.steps["generator"], messages=plan.conversation, params=plan.answer_params()
        )
        return Advance(steps=(order,))

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        return step, (step,)

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        round_no, kind = _round_of(group)
        generator, critic = plan.cast.steps["generator"], plan.cast.steps["critic"]
        if kind != "critique":
            review = prompts.critique(plan.conversation, outputs[group].text)
            order = StepOrder(name=f"r{round_no}.critique", model=critic, messages=review, params=plan.judge_params())
            return Advance(steps=(order,))
        versions = [outputs[self._version_step(n)] for n in range(1, round_no + 1)]
        scores = [parse_score(outputs[f"r{n}.critique"].text) for n in range(1, round_no + 1)]
        latest = scores[-1]
        good_enough = latest is not None and latest / 10 + _EPSILON >= plan.limits.critique_threshold
        if good_enough or round_no >= plan.limits.critique_max_rounds:
            best = versions[best_version(scores)]
            summary = Summary(
                mode=plan.mode,
                models_used=models_in_order(generator, critic),
                rounds=round_no,
                confidence=critique_confidence(scores),
            )
            return Conclude(text=best.text, model=best.model, summary=summary)
        order = StepOrder(
            name=f"r{round_no + 1}.revise",
            model=generator,
            messages=prompts.revise(plan.conversation, versions[-1].text, outputs[group].text),
            params=plan.answer_params(),
        )
        return Advance(steps=(order,))


class PipelineFlow:
    @staticmethod
    def _model(plan: Plan, stage: str) -> str:
        return plan.cast.steps[STAGE_STEP[stage]]

    def _summary(self, plan: Plan, *, extra: tuple[str, ...], rounds: int, confidence: float) -> Summary:
        models = [self._model(plan, stage) for stage in plan.cast.stages]
        return Summary(
            mode=plan.mode, models_used=models_in_order(*models, *extra), rounds=rounds, confidence=confidence
        )

    def _text_step(self, plan: Plan, index: int, previous: str | None) -> Advance:
        stage = plan.cast.stages[index]
        final = index == len(plan.cast.stages) - 1
        messages = plan.conversation if previous is None else prompts.refine(plan.conversation, previous)
        order = StepOrder(
            name=f"pipeline.{stage}",
            model=self._model(plan, stage),
            messages=messages,
            params=plan.answer_params(),
            final=final,
        )
        summary = None
        if final:
            summary = self._summary(
                plan, extra=(), rounds=index + 1, confidence=pipeline_confidence(None, validated=False)
            )
        return Advance(steps=(order,), summary=summary)

    def first(self, plan: Plan) -> Advance:
        return self._text_step(plan, 0, None)

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        return step, (step,)

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        stages = plan.cast.stages
        stage = group.removeprefix("pipeline.")
        index = stages.index(stage)
        if stage != "validate":
            text = outputs[group].text
            following = stages[index + 1]
            if following != "validate":
                return self._text_step(plan, index + 1, text)
            check = prompts.validate(plan.conversation, text)
            validator = self._model(plan, "validate")
            order = StepOrder(name="pipeline.validate", model=validator, messages=check, params=plan.judge_params())
            return Advance(steps=(order,))
        checked = outputs[f"pipeline.{stages[index - 1]}"]
        report = outputs[group].text
        verdict = parse_verdict(report)
        if verdict == "pass":
            summary = self._summary(
                plan, extra=(), rounds=len(stages), confidence=pipeline_confidence(verdict, validated=True)
            )
            return Conclude(text=checked.text, model=checked.model, summary=summary)
        # The refiner fixes what the validator rejected; without one, whoever wrote the text.
        fixer = plan.cast.steps.get("refiner", checked.model)
        order = StepOrder(
            name="pipeline.fix",
            model=fixer,
            messages=prompts.fix(plan.conversation, checked.text, report),
            params=plan.answer_params(),
            final=True,
        )
        summary = self._summary(
            plan, extra=(fixer,), rounds=len(stages) + 1, confidence=pipeline_confidence(verdict, validated=True)
        )
        return Advance(steps=(order,), summary=summary)
