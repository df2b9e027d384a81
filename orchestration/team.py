"""Which loaded model runs which step of an orchestration mode.

Follows the spec's "Orchestration Role Assignments" table:

- critique: generator = primary (coder for code task types, longctx for long-document
  ones); critic = thinker, a different model from the generator whenever one exists.
- debate: every loaded model takes part, unless INFERENCE_DEBATE_MAX_PARTICIPANTS caps
  them (then models with a reasoning role go before fast-only ones); the reconciler is
  INFERENCE_DEBATE_RECONCILE_MODEL, a role name (or a loaded model id).
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
from presets.roles import MIN_MODELS, PIPELINE_STAGE_STEPS, pick_model
from presets.routing import role_for_task

# Pipeline stages always run in this order; INFERENCE_PIPELINE_STAGES picks which run.
STAGE_ORDER: tuple[str, ...] = ("draft", "refine", "validate")
STAGE_STEP: Mapping[str, str] = PIPELINE_STAGE_STEPS
_REASONING_ROLES = frozenset({"primary", "coder", "thinker", "longctx"})


@dataclass(frozen=True, kw_only=True)
class Team:
    """The models with a ready worker now (-> their roles) and the preset's step -> model."""

    models: Mapping[str, tuple[str, ...]]
    assignments: Mapping[str, str] = field(default_factory=dict)


def team_for(
    *,
    mode: str,
    served: Iterable[str],
    roles: Mapping[str, Sequence[str]],
    preset_models: Sequence[str],
    preset_mode: str,
    preset_steps: Mapping[str, str],
) -> Team:
    """The team a request of ``mode`` gets from the models served now.

    The preset's order comes first, so ties between equally fit models go the preset's way;
    its step assignments hold only for the mode it was written for.
    """
    live = list(dict.fromkeys(served))
    ordered = [m for m in preset_models if m in live] + [m for m in live if m not in preset_models]
    return Team(
        models={m: tuple(roles.get(m, ())) for m in ordered},
        assignments=dict(preset_steps) if preset_mode == mode else {},
    )


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
    max_debaters: int = 0,
) -> Cast:
    """Choose models per step; NotEnoughModels when the mode needs more than are loaded.

    ``max_debaters``: 0 lets every model debate; N keeps the N that fit debate best.
    """
    if mode not in MIN_MODELS:
        raise UnknownMode(mode)
    if len(team.models) < MIN_MODELS[mode]:
        raise NotEnoughModels(mode=mode, needed=MIN_MODELS[mode], loaded=len(team.models))
    picker = _Picker(team)
    if mode == "critique":
        return _critique(picker, task_type)
    if mode == "debate":
        debaters = _debaters(picker, limit=max_debaters)
        reconciler = picker.assigned("reconciler") or picker.target(reconcile_target)
        return Cast(steps={"reconciler": reconciler}, participants=debaters)
    if mode == "ensemble":
        synthesizer = picker.assigned("synthesizer") or picker.target(synthesis_target)
        return Cast(steps={"synthesizer": synthesizer}, participants=list(picker.models))
    if mode == "pipeline":
        return _pipeline(picker, task_type, pipeline_stages)
    role = role_for_task(task_type)
    return Cast(steps={"single": picker.by_role([role, "primary"]) or picker.models[0]})


def _rank(picker: _Picker, model: str, wanted: Sequence[str]) -> int:
    """0 for a model whose main role is the first wanted one; worse for later or secondary roles."""
    roles = tuple(picker.roles.get(model, ()))
    for index, role in enumerate(wanted):
        if role in roles:
            return 2 * index + (0 if roles[0] == role else 1)
    return 2 * len(wanted)


def _critique(picker: _Picker, task_type: str | None) -> Cast:
    wanted = generator_roles(task_type)
    generator, critic = picker.assigned("generator"), picker.assigned("critic")
    generators = [generator] if generator else picker.models
    critics = [critic] if critic and critic != generator else picker.models
    order = {model: index for index, model in enumerate(picker.models)}
    # The best generator first, then the best thinker among the others; the team's order breaks ties.

    def fit(pair: tuple[str, str]) -> tuple[int, int, int, int]:
        g, c = pair
        return _rank(picker, g, wanted), _rank(picker, c, ["thinker"]), order[g], order[c]

    chosen_generator, chosen_critic = min(((g, c) for g in generators for c in critics if g != c), key=fit)
    return Cast(steps={"generator": chosen_generator, "critic": chosen_critic})


def _debaters(picker: _Picker, *, limit: int) -> list[str]:
    def rank(model: str) -> int:
        roles = tuple(picker.roles.get(model, ()))
        if roles[:1] and roles[0] in _REASONING_ROLES:
            return 0
        return 1 if _REASONING_ROLES.intersection(roles) else 2

    ranked = sorted(picker.models, key=rank)
    # A debate needs two voices whatever the cap says.
    return ranked if limit <= 0 else ranked[: max(limit, MIN_MODELS["debate"])]


def _pipeline(picker: _Picker, task_type: str | None, pipeline_stages: Sequence[str]) -> Cast:
    wanted = [stage for stage in STAGE_ORDER if stage in pipeline_stages]
    if not {"draft", "refine"}.intersection(wanted):
        # Nothing would write the text to validate.
        wanted = list(STAGE_ORDER)
    preset = any(step in picker.assignments for step in STAGE_STEP.values())
    chosen: dict[str, str] = {}

    wanted_steps = [STAGE_STEP[stage] for stage in wanted]
    # Loaded preset choices first, so a derived step never takes a model the preset gave another.
    for step in wanted_steps:
        assigned = picker.assigned(step)
        if assigned is not None:
            chosen[step] = assigned

    def choose(step: str, roles: Sequence[str]) -> None:
        if step in chosen or step not in wanted_steps or (preset and step not in picker.assignments):
            return
        model = picker.by_role(roles, exclude=chosen.values()) if roles else picker.any_but(*chosen.values())
        if model is not None:
            chosen[step] = model

    choose("drafter", ["fast"])
    # Validator before refiner: with two models the pipeline is drafter + validator.
    choose("validator", ["primary"])
    # No fast model: any model the validator leaves drafts.
    choose("drafter", [])
    choose("refiner", refiner_roles(task_type))
    # A pipeline of one stage is no pipeline: give the next wanted stage any spare model.
    for stage in wanted:
        if len(chosen) >= min(2, len(wanted)):
            break
        spare = picker.any_but(*chosen.values())
        if STAGE_STEP[stage] not in chosen and spare is not None:
            chosen[STAGE_STEP[stage]] = spare
    stages = [stage for stage in wanted if STAGE_STEP[stage] in chosen]
    return Cast(steps={STAGE_STEP[s]: chosen[STAGE_STEP[s]] for s in stages}, stages=stages)
