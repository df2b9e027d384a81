"""Debate and ensemble: every participant answers at once, and one step joins the answers.

debate (Du et al. 2023, "Improving Factuality and Reasoning through Multiagent Debate"):
round 1 asks each participant the request (``debate.r1.m0`` ...); each later round shows
each participant the others' previous answers and asks for an updated one. The debate
stops when the round's agreement reaches ``debate_agreement_threshold`` or after
``debate_max_rounds`` rounds; the reconciler then writes the answer from the last round's
answers (``debate.reconcile``, streamed).

ensemble (Mixture-of-Agents, Wang et al. 2024, one proposer layer): every participant
answers (``ensemble.m0`` ...); the synthesizer (the aggregator) writes one answer from
all of them (``ensemble.synth``, streamed). Agreement below ``ensemble_min_agreement``
flags the summary ``low_confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestration import prompts
from orchestration.confidence import agreement_confidence
from orchestration.dag import Advance, Decision, Plan, StepOrder, StepOutput, models_in_order
from orchestration.similarity import agreement
from worker.protocol import Summary


class DebateFlow:
    @staticmethod
    def _step(round_no: int, index: int) -> str:
        return f"debate.r{round_no}.m{index}"

    def _round(self, plan: Plan, round_no: int, previous: list[str] | None) -> Advance:
        orders = []
        for index, model in enumerate(plan.cast.participants):
            if previous is None:
                messages = plan.conversation
            else:
                others = [text for other, text in enumerate(previous) if other != index]
                messages = prompts.debate_round(plan.conversation, previous[index], others)
            orders.append(
                StepOrder(name=self._step(round_no, index), model=model, messages=messages, params=plan.answer_params())
            )
        return Advance(steps=tuple(orders))

    def first(self, plan: Plan) -> Advance:
        return self._round(plan, 1, None)

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        group, _, _ = step.rpartition(".")
        round_no = int(group.removeprefix("debate.r"))
        return group, tuple(self._step(round_no, n) for n in range(len(plan.cast.participants)))

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        round_no = int(group.removeprefix("debate.r"))
        answers = [outputs[self._step(round_no, n)].text for n in range(len(plan.cast.participants))]
        agreed = agreement(answers)
        if agreed < plan.limits.debate_agreement_threshold and round_no < plan.limits.debate_max_rounds:
            return self._round(plan, round_no + 1, answers)
        reconciler = plan.cast.steps["reconciler"]
        order = StepOrder(
            name="debate.reconcile",
            model=reconciler,
            messages=prompts.reconcile(plan.conversation, answers),
            params=plan.answer_params(),
            final=True,
        )
        summary = Summary(
            mode=plan.mode,
            models_used=models_in_order(*plan.cast.participants, reconciler),
            rounds=round_no,
            confidence=agreement_confidence(agreed),
        )
        return Advance(steps=(order,), summary=summary)


class EnsembleFlow:
    @staticmethod
    def _step(index: int) -> str:
        return f"ensemble.m{index}"

    def first(self, plan: Plan) -> Advance:
        orders = [
            StepOrder(name=self._step(index), model=model, messages=plan.conversation, params=plan.answer_params())
            for index, model in enumerate(plan.cast.participants)
        ]
        return Advance(steps=tuple(orders))

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        return "ensemble", tuple(self._step(n) for n in range(len(plan.cast.participants)))

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        answers = [outputs[self._step(n)].text for n in range(len(plan.cast.participants))]
        agreed = agreement(answers)
        synthesizer = plan.cast.steps["synthesizer"]
        order = StepOrder(
            name="ensemble.synth",
            model=synthesizer,
            messages=prompts.synthesize(plan.conversation, answers),
            params=plan.answer_params(),
            final=True,
        )
        summary = Summary(
            mode=plan.mode,
            models_used=models_in_order(*plan.cast.participants, synthesizer),
            rounds=1,
            confidence=agreement_confidence(agreed),
            low_confidence=agreed < plan.limits.ensemble_min_agreement,
        )
        return Advance(steps=(order,), summary=summary)
