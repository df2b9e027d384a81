"""Start-up validation of the active configuration; every failure is one ConfigError line.

Rules, checked in this order:

1. Every model is in the registry.
2. Every role (from the registry or INFERENCE_MODEL_ROLES) is one of primary, fast,
   coder, thinker, longctx.
3. The mode has enough models: single 1, critique/debate/ensemble/pipeline 2.
4. The mode's roles are covered by the loaded models, except for steps the preset assigns
   itself (its table is the spec's word on who does what, whatever the roles say):
   - critique: a generator, i.e. a model with role primary, coder or longctx, plus a
     second model as critic (a thinker is preferred but any model may critique);
   - debate: a reconciler, i.e. the model INFERENCE_DEBATE_RECONCILE_MODEL names, or a
     model with the role it names (default ``primary``, which defers to the preset's own
     reconciler; any other value must match a loaded model);
   - ensemble: a synthesizer, likewise from INFERENCE_ENSEMBLE_SYNTHESIS_MODEL;
   - pipeline: a ``fast`` model (drafter) and a different ``primary`` model (validator
     or final stage), and only known stage names in INFERENCE_PIPELINE_STAGES.
5. Step assignments name loaded models, fit the mode, and a critique or pipeline never
   gives two steps to one model.
6. With ``check_files``: every file is present, and where a sha256 is recorded it
   matches (cached by size and mtime, see presets.files). An embedded model counts as
   present while its PyPI package is installed, since it is assembled on first load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from presets.active import DEFAULT_TARGET, ActiveConfig, build_active
from presets.errors import ConfigError
from presets.files import FileStatus, download_command, download_hint, verify_model
from presets.registry import Registry
from presets.roles import GENERATOR_ROLES, MIN_MODELS, PIPELINE_STAGE_STEPS, ROLES, STEP_ROLES


def _roles_text(models: Sequence[str], roles: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{m}=[{','.join(roles.get(m, ()))}]" for m in models)


def _covers(models: Sequence[str], roles: Mapping[str, Sequence[str]], wanted: Sequence[str]) -> list[str]:
    return [m for m in models if any(r in roles.get(m, ()) for r in wanted)]


def _check_models(active: ActiveConfig, registry: Registry, where: str) -> None:
    for model_id in active.models:
        if model_id not in registry.models:
            known = ", ".join(registry.model_ids())
            raise ConfigError(f"{where}: unknown model {model_id!r} (known: {known})")
    for model_id in active.models:
        bad = [r for r in active.roles.get(model_id, ()) if r not in ROLES]
        if bad:
            raise ConfigError(f"{where}: model {model_id!r} has unknown role {bad[0]!r} (roles: {', '.join(ROLES)})")
    needed = MIN_MODELS[active.mode]
    if len(active.models) < needed:
        listed = ", ".join(active.models) or "none"
        raise ConfigError(
            f"{where}: mode {active.mode!r} needs at least {needed} models but the config has "
            f"{len(active.models)} ({listed})"
        )


def _check_target(active: ActiveConfig, where: str, *, step: str, target: str, setting: str) -> None:
    if target in active.models or _covers(active.models, active.roles, [target]):
        return
    if target == DEFAULT_TARGET and step in active.assigned:
        return
    kind = "model" if target not in ROLES else "role"
    raise ConfigError(
        f"{where}: mode {active.mode!r} needs a {step} ({setting}={target}) but no loaded model is that "
        f"{kind} (loaded: {_roles_text(active.models, active.roles)})"
    )


def _check_role_coverage(active: ActiveConfig, where: str) -> None:
    loaded = _roles_text(active.models, active.roles)
    generator_set = "generator" in active.assigned
    if active.mode == "critique" and not generator_set and not _covers(active.models, active.roles, GENERATOR_ROLES):
        raise ConfigError(
            f"{where}: mode 'critique' needs a generator (a model with role primary, coder or longctx) "
            f"but none is loaded (loaded: {loaded})"
        )
    if active.mode == "debate":
        _check_target(
            active, where, step="reconciler", target=active.reconcile_model, setting="INFERENCE_DEBATE_RECONCILE_MODEL"
        )
    if active.mode == "ensemble":
        _check_target(
            active,
            where,
            step="synthesizer",
            target=active.synthesis_model,
            setting="INFERENCE_ENSEMBLE_SYNTHESIS_MODEL",
        )
    if active.mode == "pipeline":
        unknown = [s for s in active.pipeline_stages if s not in PIPELINE_STAGE_STEPS]
        if unknown:
            raise ConfigError(
                f"{where}: INFERENCE_PIPELINE_STAGES has unknown stage {unknown[0]!r} "
                f"(stages: {', '.join(PIPELINE_STAGE_STEPS)})"
            )
        fast = _covers(active.models, active.roles, ["fast"])
        primary = _covers(active.models, active.roles, ["primary"])
        preset_pipeline = "drafter" in active.assigned and len(active.assigned) >= 2
        if not preset_pipeline and not any(f != p for f in fast for p in primary):
            raise ConfigError(
                f"{where}: mode 'pipeline' needs a 'fast' model (drafter) and a different 'primary' model "
                f"(validator) (loaded: {loaded})"
            )


def _check_steps(active: ActiveConfig, where: str) -> None:
    allowed = STEP_ROLES[active.mode]
    for step, model_id in active.steps.items():
        if step not in allowed:
            names = ", ".join(allowed) or "none"
            raise ConfigError(f"{where}: step {step!r} does not exist in mode {active.mode!r} (steps: {names})")
        if model_id not in active.models:
            raise ConfigError(f"{where}: step {step!r} names model {model_id!r}, which the config does not load")
    required = {"critique": ("generator", "critic"), "debate": ("reconciler",), "ensemble": ("synthesizer",)}
    for step in required.get(active.mode, ()):
        if step not in active.steps:
            raise ConfigError(f"{where}: mode {active.mode!r} has no model for step {step!r}")
    if active.mode == "pipeline" and ("drafter" not in active.steps or len(active.steps) < 2):
        raise ConfigError(
            f"{where}: mode 'pipeline' needs a drafter and at least one later stage, got {dict(active.steps) or 'none'}"
        )
    if active.mode in ("critique", "pipeline") and len(set(active.steps.values())) != len(active.steps):
        raise ConfigError(f"{where}: mode {active.mode!r} gives two steps to one model: {dict(active.steps)}")


def _check_files(active: ActiveConfig, registry: Registry, where: str) -> None:
    for model_id in active.models:
        spec = registry.model(model_id)
        if spec.embedded:
            if not registry.embedded_installed(model_id):
                command = download_command(spec, models_dir=registry.models_dir)
                raise ConfigError(f"{where}: embedded model {model_id!r} is not installed; run: {command}")
            if not registry.model_paths(model_id)[0].is_file():
                continue
        for check in verify_model(registry, model_id):
            if check.status is FileStatus.MISSING:
                hint = download_hint(spec, models_dir=registry.models_dir)
                raise ConfigError(f"{where}: model {model_id!r} file missing: {check.path}; download it with: {hint}")
            if check.status is FileStatus.MISMATCH:
                hint = download_hint(spec, models_dir=registry.models_dir)
                raise ConfigError(
                    f"{where}: model {model_id!r} file {check.path} fails verification ({check.detail}); "
                    f"delete it and run: {hint}"
                )


def validate_active(active: ActiveConfig, registry: Registry, *, check_files: bool) -> None:
    """Raise ConfigError (one line) if the active configuration cannot run."""
    where = f"config {active.config!r}"
    _check_models(active, registry, where)
    _check_role_coverage(active, where)
    _check_steps(active, where)
    if check_files:
        _check_files(active, registry, where)


def validate_all_presets(registry: Registry) -> dict[str, ActiveConfig]:
    """Validate every preset as it would run with no env overrides; files are not checked."""
    checked: dict[str, ActiveConfig] = {}
    for name in registry.presets:
        active = build_active(registry, config=name)
        validate_active(active, registry, check_files=False)
        checked[name] = active
    return checked
