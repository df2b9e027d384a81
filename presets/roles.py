"""Role and orchestration-mode vocabulary shared by the registry, validation and routing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal, get_args

from presets.settings import OrchestrationMode

Role = Literal["primary", "fast", "coder", "thinker", "longctx"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
MODES: Final[tuple[str, ...]] = get_args(OrchestrationMode)

# Fewest models each mode can run with (spec "Mode Definitions" table).
MIN_MODELS: Final[Mapping[str, int]] = {
    "single": 1,
    "critique": 2,
    "debate": 2,
    "ensemble": 2,
    "pipeline": 2,
}

# Step roles a preset may assign per mode. Debate and ensemble participants are all
# loaded models, so only the single-model steps are named.
STEP_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "single": (),
    "critique": ("generator", "critic"),
    "debate": ("reconciler",),
    "ensemble": ("synthesizer",),
    "pipeline": ("drafter", "refiner", "validator"),
}

# INFERENCE_PIPELINE_STAGES names stages; each stage is run by one step role.
PIPELINE_STAGE_STEPS: Final[Mapping[str, str]] = {
    "draft": "drafter",
    "refine": "refiner",
    "validate": "validator",
}

# Roles that may generate the first answer in critique mode (spec "Orchestration Role
# Assignments": primary, coder for code tasks, longctx for long documents).
GENERATOR_ROLES: Final[tuple[str, ...]] = ("primary", "coder", "longctx")
# Critique prefers a thinker as critic; any other loaded model may critique (D2, D9).
CRITIC_ROLES: Final[tuple[str, ...]] = ("thinker",)
# Pipeline refiners: coder for code, thinker for analysis.
REFINER_ROLES: Final[tuple[str, ...]] = ("coder", "thinker")


def models_with_role(
    role: str,
    models: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Models covering ``role``, those whose main (first) role it is before the rest.

    Within each group the order of ``models`` is kept, so callers control ties.
    """
    skipped = set(exclude)
    candidates = [m for m in models if m not in skipped and role in roles.get(m, ())]
    main = [m for m in candidates if tuple(roles.get(m, ()))[:1] == (role,)]
    return main + [m for m in candidates if m not in main]


def pick_model(
    wanted_roles: Sequence[str],
    models: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    exclude: Iterable[str] = (),
) -> str | None:
    """The best model for the first role in ``wanted_roles`` that any model covers."""
    skipped = tuple(exclude)
    for role in wanted_roles:
        found = models_with_role(role, models, roles, exclude=skipped)
        if found:
            return found[0]
    return None
