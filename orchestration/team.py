"""Which loaded model runs which step of an orchestration mode.

Follows the spec's "Orchestration Role Assignments" table:

- critique: generator = primary (coder for code task types, longctx for long-document
  ones); critic = thinker, a different model from the generator whenever one exists.
- debate: every loaded model takes part (at most three; models with a reasoning role
  before fast-only ones); the reconciler is INFERENCE_DEBATE_RECONCILE_MODEL, a role
  name (or a loaded model id).
- ensemble: every loaded model answers; the synthesizer is INFERENCE_ENSEMBLE_SYNTHESIS_MODEL.
- pipeline: drafter = fast, refiner = coder for code tasks or thinker otherwise,
  validator = primary, each a different model; a stage no spare model fits is skipped.

The active preset's step assignments win wherever they name a loaded model. A pipeline
preset that assigns some stages but not others (D1 assigns drafter and validator only)
runs just the stages it assigns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from orchestration.errors import NotEnoughModels, UnknownMode
from presets.roles import MIN_MODELS, pick_model
from presets.roles import PIPELINE_STAGE_STEPS as STAGE_STEP
from presets.routing import role_for_task

MAX_DEBATERS = 3
# Pipeline stages always run in this order; INFERENCE_PIPELINE_STAGES picks which run.
STAGE_ORDER: tuple[str, ...] = ("draft", "refine", "validate")
_REASONING_ROLES = frozenset({"primary", "coder", "thinker", "longctx"})


@dataclass(frozen=True, kw_only=True)
class Team:
    """The models with a ready worker now (-> their roles) and the preset's step -> model."""

    models: Mapping[str, tuple[str, ...]]
    assignments: Mapping[str, str] = field(default_factory=dict)


class Cast(msgspec.Struct, frozen=True, kw_only=True):
    """The models chosen for one DAG; stored with its plan so every worker agrees on them."""

    steps: dict[str, str]
    participants: list[str] = []
    stages: list[str] = []


def generator_roles(task_type: str | None) -> tuple[str, ...]:
    role = role_for_task(task_type)
    if role in ("coder", "longctx"):
        return (role, "primary")
    return ("primary",)


def refiner_roles(task_type: str | None) -> tuple[str, ...]:
    return ("coder", "thinker") if role_for_task(task_type) == "coder" else ("thinker", "coder")


class _Picker:
    def __init__(self, team: Team) -> None:
        self.models = list(team.models)
        self.roles: Mapping[str, Sequence[str]] = team.models
        self.assignments = team.assignments

    def assigned(self, step: str) -> str | None:
        model = self.assignments.get(step)
        return model if model in self.roles else None

    def by_role(self, wanted: Sequence[str], *, exclude: Iterable[str] = ()) -> str | None:
        return pick_model(wanted, self.models, self.roles, exclude=[m for m in exclude if m])

    def any_but(self, *exclude: str | None) -> str | None:
        return next((m for m in self.models if m not in exclude), None)

    def target(self, name: str) -> str:
        """A reconcile/synthesis setting: a loaded model id, or a role (primary as fallback)."""
        if name in self.roles:
            return name
        return self.by_role([name, "primary"]) or self.models[0]


def cast_for(
    team: Team,
    *,
    mode: str,
    task_type: str | None,
    reconcile_target: str,
    synthesis_target: str,
    pipeline_stages: Sequence[str],
) -> Cast:
    """Choose models per step; NotEnoughModels when the mode needs more than are loaded."""
    if mode not in MIN_MODELS:
        raise UnknownMode(mode)
    if len(team.models) < MIN_MODELS[mode]:
        raise NotEnoughModels(mode=mode, needed=MIN_MODELS[mode], loaded=len(team.models))
    picker = _Picker(team)
    if mode == "critique":
        return _critique(picker, task_type)
    if mode == "debate":
        debaters = _debaters(picker)
        reconciler = picker.assigned("reconciler") or picker.target(reconcile_target)
        return Cast(steps={"reconciler": reconciler}, participants=debaters)
    if mode == "ensemble":
        synthesizer = picker.assigned("synthesizer") or picker.target(synthesis_target)
        return Cast(steps={"synthesizer": synthesizer}, participants=list(picker.models))
    if mode == "pipeline":
        return _pipeline(picker, task_type, pipeline_stages)
    role = role_for_task(task_type)
    return Cast(steps={"single": picker.by_role([role, "primary"]) or picker.models[0]})


def _critique(picker: _Picker, task_type: str | None) -> Cast:
    wanted = generator_roles(task_type)
    generator = picker.assigned("generator")
    critic = picker.assigned("critic")
    if generator is None:
        # Leave the best thinker free to critique when another model can generate.
        spare = critic or picker.by_role(["thinker"])
        generator = (
            picker.by_role(wanted, exclude=[spare] if spare else [])
            or (picker.by_role(wanted) if critic is None else None)
            or picker.any_but(spare, critic)
            or picker.models[0]
        )
    if critic is None or critic == generator:
        critic = picker.by_role(["thinker"], exclude=[generator]) or picker.any_but(generator) or generator
    return Cast(steps={"generator": generator, "critic": critic})


def _debaters(picker: _Picker) -> list[str]:
    def rank(model: str) -> int:
        roles = tuple(picker.roles.get(model, ()))
        if roles[:1] and roles[0] in _REASONING_ROLES:
            return 0
        return 1 if _REASONING_ROLES.intersection(roles) else 2

    return sorted(picker.models, key=rank)[:MAX_DEBATERS]


def _pipeline(picker: _Picker, task_type: str | None, pipeline_stages: Sequence[str]) -> Cast:
    wanted = [stage for stage in STAGE_ORDER if stage in pipeline_stages] or list(STAGE_ORDER)
    preset = any(step in picker.assignments for step in STAGE_STEP.values())
    chosen: dict[str, str] = {}
    # Validator before refiner: with two models the pipeline is drafter + validator.
    for stage, roles in (("draft", ("fast", "primary")), ("validate", ("primary",)), ("refine", refiner_roles(task_type))):
        step = STAGE_STEP[stage]
        if stage not in wanted:
            continue
        model = picker.assigned(step)
        if model is None and (not preset or step in picker.assignments):
            model = picker.by_role(roles, exclude=chosen.values())
        if model is not None:
            chosen[step] = model
    # A pipeline of one stage is no pipeline: give the next wanted stage any spare model.
    for stage in wanted:
        if len(chosen) >= min(2, len(wanted)):
            break
        spare = picker.any_but(*chosen.values())
        if STAGE_STEP[stage] not in chosen and spare is not None:
            chosen[STAGE_STEP[stage]] = spare
    stages = [stage for stage in wanted if STAGE_STEP[stage] in chosen]
    return Cast(steps={STAGE_STEP[s]: chosen[STAGE_STEP[s]] for s in stages}, stages=stages)
