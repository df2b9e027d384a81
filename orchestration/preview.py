"""The DAG a request would run, worked out without Redis, workers or models.

``python -m presets plan`` prints it. It takes the path the front takes: the same team
(``team_for``), the same plan (``start.make_plan``) and the same flow (``dispatch.flow_for``)
with its first decision. Later decisions depend on what the models write, so the walk feeds
each flow answers that never end it early: they share no words (a debate never agrees) and
hold no score or verdict (a critique never satisfies, a validator never passes). The result
is the longest DAG the settings allow; the flows' early exits are noted beside it.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass

from orchestration.dag import Advance, Flow, Plan, StepOrder, StepOutput
from orchestration.dispatch import flow_for
from orchestration.start import make_plan
from orchestration.team import team_for
from presets.active import ActiveConfig
from presets.settings import Settings
from worker.protocol import ChatJob, Message, SamplingParams
from worker.queue import QueuePolicy

# Flows loop on rounds only up to their max-rounds limits; this bounds a broken one.
_MAX_STEPS = 500

_EARLY_EXIT = {
    "critique": "stops at the first critique scoring at least INFERENCE_CRITIQUE_THRESHOLD",
    "debate": "stops at the first round agreeing at least INFERENCE_DEBATE_AGREEMENT_THRESHOLD",
    "pipeline": "a validator's PASS ends it without the fix step",
}


@dataclass(frozen=True, kw_only=True)
class PlannedStep:
    name: str
    model: str
    after: tuple[str, ...]
    streamed: bool


@dataclass(frozen=True, kw_only=True)
class DagPreview:
    plan: Plan
    steps: tuple[PlannedStep, ...]
    first: tuple[str, ...]

    @property
    def max_rounds(self) -> int | None:
        limits = self.plan.limits
        return {"critique": limits.critique_max_rounds, "debate": limits.debate_max_rounds}.get(self.plan.mode)

    @property
    def models_used(self) -> list[str]:
        return list(dict.fromkeys(step.model for step in self.steps))

    @property
    def early_exit(self) -> str | None:
        return _EARLY_EXIT.get(self.plan.mode)


def _request(task_type: str | None, *, now_s: float) -> ChatJob:
    return ChatJob(
        request_id="plan",
        model="",
        messages=[Message("user", "(the request)")],
        params=SamplingParams(),
        channel="plan",
        priority=2,
        deadline_ms=int((now_s + 3600) * 1000),
        task_type=task_type,
    )


def _inconclusive(order: StepOrder) -> str:
    # A hex digest: no words shared between steps, no score, no PASS/FAIL.
    return hashlib.sha256(order.name.encode()).hexdigest()


def _walk(flow: Flow, plan: Plan) -> list[PlannedStep]:
    pending: deque[tuple[StepOrder, tuple[str, ...]]] = deque((order, ()) for order in flow.first(plan).steps)
    outputs: dict[str, StepOutput] = {}
    decided: set[str] = set()
    walked: list[PlannedStep] = []
    while pending and len(walked) < _MAX_STEPS:
        order, after = pending.popleft()
        walked.append(PlannedStep(name=order.name, model=order.model, after=after, streamed=order.final))
        outputs[order.name] = StepOutput(model=order.model, text=_inconclusive(order), reason="stop")
        if order.final:
            # A streamed step is the answer: the DAG ends with it.
            continue
        group, members = flow.group(plan, order.name)
        if group in decided or not all(member in outputs for member in members):
            continue
        decided.add(group)
        decision = flow.decide(plan, group, outputs)
        if isinstance(decision, Advance):
            pending.extend((following, members) for following in decision.steps)
    return walked


def preview_dag(
    active: ActiveConfig,
    *,
    settings: Settings,
    mode: str | None = None,
    task_type: str | None = None,
) -> DagPreview:
    """The DAG a request of ``mode`` (default: the active one) would run with every active model up.

    Raises as ``make_plan`` does (NotEnoughModels, UnknownMode).
    """
    chosen = mode or active.mode
    team = team_for(
        mode=chosen,
        served=active.models,
        roles=active.roles,
        preset_models=active.models,
        preset_mode=active.mode,
        preset_steps=active.steps,
    )
    now_s = time.time()
    plan = make_plan(
        settings=settings,
        policy=QueuePolicy(),
        template=_request(task_type, now_s=now_s),
        mode=chosen,
        team=team,
        created_ms=int(now_s * 1000),
    )
    flow = flow_for(chosen)
    first = tuple(order.name for order in flow.first(plan).steps)
    return DagPreview(plan=plan, steps=tuple(_walk(flow, plan)), first=first)
