"""The active configuration: a preset with the INFERENCE_* overrides applied.

Precedence: INFERENCE_PRELOAD_MODELS replaces the preset's models,
INFERENCE_ORCHESTRATION_MODE its mode, INFERENCE_MODEL_ROLES the roles per model. The
preset's step assignments are kept while its mode is unchanged and every step model is
still loaded; otherwise steps are derived from roles (``derive_steps``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from presets.errors import UnknownPresetError
from presets.roles import (
    CRITIC_ROLES,
    GENERATOR_ROLES,
    PIPELINE_STAGE_STEPS,
    REFINER_ROLES,
    STEP_ROLES,
    pick_model,
)
from presets.settings import OrchestrationMode

if TYPE_CHECKING:
    from presets.registry import Registry
    from presets.settings import Settings

DEFAULT_PIPELINE_STAGES: tuple[str, ...] = ("draft", "refine", "validate")
# INFERENCE_DEBATE_RECONCILE_MODEL / INFERENCE_ENSEMBLE_SYNTHESIS_MODEL when unset.
DEFAULT_TARGET = "primary"


@dataclass(frozen=True, kw_only=True)
class ActiveConfig:
    """What the service runs. ``steps`` maps step role -> model id, in run order.

    ``assigned``: the steps whose model is the preset's own choice, not derived from roles.
    """

    config: str
    models: tuple[str, ...]
    mode: OrchestrationMode
    roles: Mapping[str, tuple[str, ...]]
    steps: Mapping[str, str]
    reconcile_model: str = "primary"
    synthesis_model: str = "primary"
    pipeline_stages: tuple[str, ...] = DEFAULT_PIPELINE_STAGES
    overridden: frozenset[str] = frozenset()
    assigned: frozenset[str] = frozenset()

    @property
    def participants(self) -> tuple[str, ...]:
        """Models that answer in parallel in debate and ensemble modes: all of them."""
        return self.models if self.mode in ("debate", "ensemble") else ()


def _pick_target(target: str, models: Sequence[str], roles: Mapping[str, Sequence[str]]) -> str | None:
    # The reconcile/synthesis settings name either a loaded model id or a role.
    if target in models:
        return target
    return pick_model([target], models, roles)


def derive_steps(
    mode: str,
    models: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    reconcile_model: str = "primary",
    synthesis_model: str = "primary",
    pipeline_stages: Sequence[str] = DEFAULT_PIPELINE_STAGES,
) -> dict[str, str]:
    """Step assignments from roles; a step no model fits is left out for validation to report."""
    steps: dict[str, str] = {}
    if mode == "critique":
        # Choose the critic first so a thinker critiques and another model generates (D4, D7).
        critic = pick_model(CRITIC_ROLES, models, roles)
        generator = pick_model(GENERATOR_ROLES, models, roles, exclude=[critic] if critic else [])
        if generator is None:
            generator = pick_model(GENERATOR_ROLES, models, roles)
            critic = pick_model(CRITIC_ROLES, models, roles, exclude=[generator] if generator else [])
        if generator is not None and critic is None:
            critic = next((m for m in models if m != generator), None)
        if generator is not None:
            steps["generator"] = generator
        if critic is not None and critic != generator:
            steps["critic"] = critic
    elif mode == "debate":
        reconciler = _pick_target(reconcile_model, models, roles)
        if reconciler is not None:
            steps["reconciler"] = reconciler
    elif mode == "ensemble":
        synthesizer = _pick_target(synthesis_model, models, roles)
        if synthesizer is not None:
            steps["synthesizer"] = synthesizer
    elif mode == "pipeline":
        used: list[str] = []
        wanted = {PIPELINE_STAGE_STEPS[s] for s in pipeline_stages if s in PIPELINE_STAGE_STEPS}
        # Validator before refiner: a 2-model pipeline needs fast + primary, not a refiner.
        for step, step_roles in (("drafter", ("fast",)), ("validator", ("primary",)), ("refiner", REFINER_ROLES)):
            if step in wanted:
                chosen = pick_model(step_roles, models, roles, exclude=used)
                if chosen is not None:
                    steps[step] = chosen
                    used.append(chosen)
    return _ordered(mode, steps)


def _ordered(mode: str, steps: Mapping[str, str]) -> dict[str, str]:
    order = STEP_ROLES.get(mode, ())
    known = {k: steps[k] for k in order if k in steps}
    # Keys the mode does not define stay, last, so validation can name them.
    return known | {k: v for k, v in steps.items() if k not in known}


def _preset_steps(
    steps: Mapping[str, str],
    mode: str,
    models: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    reconcile_model: str,
    synthesis_model: str,
    pipeline_stages: Sequence[str],
) -> dict[str, str]:
    kept = dict(steps)
    for step, target in (("reconciler", reconcile_model), ("synthesizer", synthesis_model)):
        if step in kept and target != kept[step] and target not in roles.get(kept[step], ()):
            # An explicit model id, or a role the preset's choice lacks, wins over the preset.
            chosen = _pick_target(target, models, roles)
            if chosen is not None:
                kept[step] = chosen
    if mode == "pipeline":
        wanted = {PIPELINE_STAGE_STEPS.get(s, "") for s in pipeline_stages}
        kept = {k: v for k, v in kept.items() if k in wanted or k not in STEP_ROLES["pipeline"]}
    return _ordered(mode, kept)


def build_active(
    registry: Registry,
    *,
    config: str,
    models: Sequence[str] = (),
    mode: OrchestrationMode | None = None,
    role_overrides: Mapping[str, Sequence[str]] | None = None,
    reconcile_model: str = "primary",
    synthesis_model: str = "primary",
    pipeline_stages: Sequence[str] = DEFAULT_PIPELINE_STAGES,
) -> ActiveConfig:
    """Combine a preset with explicit overrides; unknown model ids are left for validation."""
    preset = registry.presets.get(config)
    if preset is None and not models:
        raise UnknownPresetError(config, known=registry.presets)
    overridden: set[str] = set()
    chosen_models = tuple(dict.fromkeys(models))
    if chosen_models and (preset is None or chosen_models != preset.models):
        overridden.add("models")
    if not chosen_models and preset is not None:
        chosen_models = preset.models
    chosen_mode: OrchestrationMode = mode or (preset.mode if preset is not None else "single")
    if preset is not None and chosen_mode != preset.mode:
        overridden.add("mode")
    overrides = role_overrides or {}
    if any(m in overrides for m in chosen_models):
        overridden.add("roles")
    roles = {
        m: tuple(overrides[m]) if m in overrides else (registry.models[m].roles if m in registry.models else ())
        for m in chosen_models
    }
    stages = tuple(pipeline_stages)
    usable = (
        preset is not None
        and bool(preset.steps)
        and chosen_mode == preset.mode
        and set(preset.steps.values()) <= set(chosen_models)
    )
    assigned: frozenset[str] = frozenset()
    if preset is not None and usable:
        steps = _preset_steps(
            preset.steps,
            chosen_mode,
            chosen_models,
            roles,
            reconcile_model=reconcile_model,
            synthesis_model=synthesis_model,
            pipeline_stages=stages,
        )
        assigned = frozenset(step for step, model in steps.items() if preset.steps.get(step) == model)
    else:
        steps = derive_steps(
            chosen_mode,
            chosen_models,
            roles,
            reconcile_model=reconcile_model,
            synthesis_model=synthesis_model,
            pipeline_stages=stages,
        )
    return ActiveConfig(
        config=config,
        models=chosen_models,
        mode=chosen_mode,
        roles=MappingProxyType(roles),
        steps=MappingProxyType(steps),
        reconcile_model=reconcile_model,
        synthesis_model=synthesis_model,
        pipeline_stages=stages,
        overridden=frozenset(overridden),
        assigned=assigned,
    )


def resolve_active(registry: Registry, settings: Settings) -> ActiveConfig:
    """The active configuration the INFERENCE_* settings describe."""
    return build_active(
        registry,
        config=settings.config,
        models=settings.preload_models,
        mode=settings.orchestration_mode,
        role_overrides=settings.model_roles,
        reconcile_model=settings.debate_reconcile_model,
        synthesis_model=settings.ensemble_synthesis_model,
        pipeline_stages=settings.pipeline_stages,
    )
