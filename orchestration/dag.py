"""The shapes of an orchestration DAG: its plan, step outputs and the decisions between steps.

A DAG is one client request run as several chat jobs. Its plan (who runs what, and the
settings in force when it started) is fixed at start and stored in Redis, so any worker
can take the next decision without the front. A flow (one per mode) turns the outputs
recorded so far into the next decision: more steps to queue (``Advance``), or the final
answer from an earlier output (``Conclude``). Flows are pure functions of the plan and the
outputs, so a retried step that re-takes a decision takes the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec

from orchestration.team import Cast
from presets.settings import Settings
from worker.protocol import ChatJob, Message, SamplingParams, Summary
from worker.queue import QueuePolicy

# A judge's format line must not be cut off by a small client max_tokens.
# Judges should grade the same text the same way.
JUDGE_TEMPERATURE = 0.2


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The orchestration settings in force when the DAG started."""

    critique_max_rounds: int
    critique_threshold: float
    debate_max_rounds: int
    debate_agreement_threshold: float
    ensemble_min_agreement: float
    judge_max_tokens: int = 512
    step_max_tokens: int = 1024

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            critique_max_rounds=max(settings.critique_max_rounds, 1),
            critique_threshold=settings.critique_threshold,
            debate_max_rounds=max(settings.debate_max_rounds, 1),
            debate_agreement_threshold=settings.debate_agreement_threshold,
            ensemble_min_agreement=settings.ensemble_min_agreement,
            judge_max_tokens=settings.judge_max_tokens,
            step_max_tokens=settings.step_max_tokens,
        )


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    dag_id: str
    mode: str
    template: ChatJob
    cast: Cast
    limits: Limits
    queue_strategy: str
    queue_ageing_s: float
    queue_levels: int
    ttl_s: int
    created_ms: int

    def policy(self) -> QueuePolicy:
        return QueuePolicy(strategy=self.queue_strategy, ageing_s=self.queue_ageing_s, levels=self.queue_levels)

    @property
    def conversation(self) -> list[Message]:
        return self.template.messages

    def answer_params(self) -> SamplingParams:
        # A request without max_tokens could otherwise run every step to the end of the context.
        if self.template.params.max_tokens is not None:
            return self.template.params
        return msgspec.structs.replace(self.template.params, max_tokens=self.limits.step_max_tokens)

    def judge_params(self) -> SamplingParams:
        # The client's stop sequences are for its answer; in a critique they could cut the SCORE line.
        asked = self.template.params.max_tokens
        return SamplingParams(
            # At least the judge budget, so a short client max_tokens cannot cut the score line.
            max_tokens=max(asked or 0, self.limits.judge_max_tokens),
            temperature=JUDGE_TEMPERATURE,
            top_p=self.template.params.top_p,
            seed=self.template.params.seed,
        )


class StepOutput(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    text: str
    reason: str


class FinalAnswer(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class StepOrder:
    """One step to queue. ``final`` steps stream their tokens to the client."""

    name: str
    model: str
    messages: list[Message]
    params: SamplingParams
    final: bool = False


@dataclass(frozen=True, kw_only=True)
class Advance:
    """Queue these steps; ``summary`` is published first when one of them writes the answer."""

    steps: tuple[StepOrder, ...]
    summary: Summary | None = None


@dataclass(frozen=True, kw_only=True)
class Conclude:
    """The answer is an output the DAG already has: publish it and finish."""

    text: str
    model: str
    summary: Summary


Decision = Advance | Conclude


class Flow(Protocol):
    def first(self, plan: Plan) -> Advance:
        """The steps that start the DAG."""
        ...

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        """The transition a finished step belongs to, and every step that must finish first."""
        ...

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        """What follows once every step of ``group`` has an output."""
        ...


def models_in_order(*models: str) -> list[str]:
    """Each model once, in the order first called."""
    return list(dict.fromkeys(models))


def step_job(plan: Plan, order: StepOrder) -> ChatJob:
    template = plan.template
    return ChatJob(
        request_id=template.request_id,
        model=order.model,
        messages=order.messages,
        params=order.params,
        channel=template.channel,
        priority=template.priority,
        deadline_ms=template.deadline_ms,
        task_type=template.task_type,
        orchestration_mode=plan.mode,
        publish_tokens=order.final,
        dag_id=plan.dag_id,
        step=order.name,
    )
