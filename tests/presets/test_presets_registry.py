"""The registry against the architecture spec's tables, and the active-config overrides."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from presets.active import build_active, resolve_active
from presets.errors import ConfigError, UnknownModelError, UnknownPresetError
from presets.gguf import read_context_length
from presets.registry import Registry, load_registry
from presets.settings import load_settings
from presets.validation import validate_all_presets

PHI4, DEEPSEEK, QWEN, LLAMA, PHI3 = "phi-4", "deepseek-r1-7b", "qwen2.5-7b", "llama-3.2-3b", "phi-3-medium-128k"
ALL5 = {PHI4, DEEPSEEK, QWEN, LLAMA, PHI3}

# Spec "Configuration Presets (33 Total)": config -> (models, mode).
SPEC_PRESETS: dict[str, tuple[set[str], str]] = {
    "S1": ({PHI4}, "single"),
    "S2": ({DEEPSEEK}, "single"),
    "S3": ({QWEN}, "single"),
    "S4": ({LLAMA}, "single"),
    "S5": ({PHI3}, "single"),
    "D1": ({PHI4, LLAMA}, "pipeline"),
    "D2": ({PHI4, QWEN}, "critique"),
    "D3": ({PHI4, DEEPSEEK}, "debate"),
    "D4": ({DEEPSEEK, QWEN}, "critique"),
    "D5": ({QWEN, LLAMA}, "pipeline"),
    "D6": ({PHI3, LLAMA}, "pipeline"),
    "D7": ({DEEPSEEK, LLAMA}, "critique"),
    "D8": ({PHI4, PHI3}, "critique"),
    "D9": ({PHI3, QWEN}, "critique"),
    "D10": ({PHI3, DEEPSEEK}, "debate"),
    "T1": ({PHI4, QWEN, LLAMA}, "pipeline"),
    "T2": ({PHI4, DEEPSEEK, LLAMA}, "ensemble"),
    "T3": ({DEEPSEEK, QWEN, LLAMA}, "pipeline"),
    "T4": ({PHI4, DEEPSEEK, QWEN}, "debate"),
    "T5": ({PHI3, QWEN, LLAMA}, "pipeline"),
    "T6": ({PHI4, PHI3, LLAMA}, "pipeline"),
    "T7": ({PHI4, PHI3, QWEN}, "ensemble"),
    "T8": ({PHI4, PHI3, DEEPSEEK}, "debate"),
    "T9": ({PHI3, DEEPSEEK, QWEN}, "ensemble"),
    "T10": ({PHI3, DEEPSEEK, LLAMA}, "pipeline"),
    "Q1": ({PHI4, DEEPSEEK, QWEN, LLAMA}, "ensemble"),
    "Q2": ({PHI4, PHI3, QWEN, LLAMA}, "pipeline"),
    "Q3": ({PHI4, PHI3, DEEPSEEK, LLAMA}, "ensemble"),
    "Q4": ({PHI4, PHI3, DEEPSEEK, QWEN}, "debate"),
    "Q5": ({PHI3, DEEPSEEK, QWEN, LLAMA}, "ensemble"),
    "P1": (ALL5, "ensemble"),
    "P2": (ALL5, "pipeline"),
    "P3": (ALL5, "debate"),
}

# Spec "Roles" column of the dual and triple tables, as step assignments.
SPEC_STEPS: dict[str, dict[str, str]] = {
    "D1": {"drafter": LLAMA, "validator": PHI4},
    "D2": {"generator": PHI4, "critic": QWEN},
    "D3": {"reconciler": PHI4},
    "D4": {"generator": QWEN, "critic": DEEPSEEK},
    "D5": {"drafter": LLAMA, "refiner": QWEN},
    "D6": {"drafter": LLAMA, "refiner": PHI3},
    "D7": {"generator": LLAMA, "critic": DEEPSEEK},
    "D8": {"generator": PHI3, "critic": PHI4},
    "D9": {"generator": PHI3, "critic": QWEN},
    "T1": {"drafter": LLAMA, "refiner": QWEN, "validator": PHI4},
    "T2": {"synthesizer": PHI4},
    "T3": {"drafter": LLAMA, "refiner": QWEN, "validator": DEEPSEEK},
    "T5": {"drafter": LLAMA, "refiner": QWEN, "validator": PHI3},
    "T6": {"drafter": LLAMA, "refiner": PHI4, "validator": PHI3},
    "T10": {"drafter": LLAMA, "refiner": DEEPSEEK, "validator": PHI3},
}

# Spec "Model -> Role Assignment": primary role first, then the secondary roles.
SPEC_ROLES = {
    PHI4: ("primary", "thinker", "coder"),
    LLAMA: ("fast", "primary"),
    QWEN: ("coder", "primary", "fast"),
    DEEPSEEK: ("thinker", "primary"),
    PHI3: ("longctx", "primary", "thinker"),
}

# Spec "Appendix: Model Download Commands": repo id and the file it fetches.
SPEC_DOWNLOADS = {
    PHI4: ("microsoft/phi-4-gguf", "phi-4-Q4_K_S.gguf"),
    DEEPSEEK: ("unsloth/DeepSeek-R1-Distill-Qwen-7B-GGUF", "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"),
    LLAMA: ("hugging-quants/Llama-3.2-3B-Instruct-Q4_K_M-GGUF", "llama-3.2-3b-instruct-q4_k_m.gguf"),
    PHI3: ("microsoft/Phi-3-medium-128k-instruct-gguf", "Phi-3-medium-128k-instruct-Q4_K_M.gguf"),
}


def test_spec_presets_have_the_spec_models_and_modes(registry: Registry) -> None:
    spec_names = {name for name in registry.presets if not name.startswith("E")}
    assert spec_names == set(SPEC_PRESETS)
    for name, (models, mode) in SPEC_PRESETS.items():
        preset = registry.preset(name)
        assert set(preset.models) == models, name
        assert len(preset.models) == len(models), name
        assert preset.mode == mode, name


@pytest.mark.parametrize("name", sorted(SPEC_STEPS))
def test_dual_and_triple_presets_assign_the_spec_steps(registry: Registry, name: str) -> None:
    assert dict(registry.preset(name).steps) == SPEC_STEPS[name]


def test_every_preset_validates_with_default_settings(registry: Registry) -> None:
    checked = validate_all_presets(registry)
    assert len(checked) == 38
    assert checked["Q2"].steps == {"drafter": LLAMA, "refiner": QWEN, "validator": PHI4}
    assert checked["D10"].steps == {"reconciler": PHI3}


def test_embedded_presets_cover_every_mode_over_the_tiny_models(registry: Registry) -> None:
    embedded = {name: registry.preset(name) for name in ("E1", "E2", "E3", "E4", "E5")}
    assert [p.mode for p in embedded.values()] == ["single", "critique", "debate", "ensemble", "pipeline"]
    assert embedded["E1"].models == ("smollm2-135m", "gemma3-270m")
    for preset in list(embedded.values())[1:]:
        assert set(preset.models) == {"smollm2-135m", "gemma3-270m"}
    assert load_settings().config == "E1"


def test_model_roles_follow_the_spec_role_table(registry: Registry) -> None:
    for model_id, roles in SPEC_ROLES.items():
        assert registry.model(model_id).roles == roles
        assert registry.model(model_id).primary_role == roles[0]


def test_hub_models_download_from_the_spec_appendix(registry: Registry) -> None:
    for model_id, (repo_id, file_name) in SPEC_DOWNLOADS.items():
        spec = registry.model(model_id)
        assert (spec.source.kind, spec.source.repo_id, spec.file_name) == ("huggingface", repo_id, file_name)
    qwen = registry.model(QWEN)
    # The Qwen repo ships this quant only as two split-GGUF shards.
    assert qwen.source.repo_id == "Qwen/Qwen2.5-7B-Instruct-GGUF"
    assert [f.name for f in qwen.files] == [
        "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
        "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
    ]


def test_model_metadata_is_consistent(registry: Registry) -> None:
    for spec in registry.models.values():
        assert spec.memory_mb == spec.memory_estimate_mb(n_ctx=spec.context_length), spec.model_id
        assert spec.memory_mb > spec.size_mb
        for model_file in spec.files:
            assert model_file.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", model_file.sha256)
        known_sizes = [f.size_bytes for f in spec.files if f.size_bytes is not None]
        if len(known_sizes) == len(spec.files):
            assert abs(sum(known_sizes) / 2**20 - spec.size_mb) < 1, spec.model_id
    assert registry.model("smollm2-135m").files[0].sha256 == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
    assert registry.model(PHI4).memory_estimate_mb(n_ctx=4096) < registry.model(PHI4).memory_mb


def test_lookups_raise_typed_errors(registry: Registry) -> None:
    with pytest.raises(UnknownModelError) as model_error:
        registry.model("gpt-4")
    assert model_error.value.model_id == "gpt-4"
    with pytest.raises(UnknownPresetError, match="unknown preset 'X9'"):
        registry.preset("X9")


def test_model_paths(registry: Registry, tmp_path: Path) -> None:
    assert registry.model_path(PHI4) == tmp_path / "models" / PHI4 / "phi-4-Q4_K_S.gguf"
    smollm2 = registry.model_path("smollm2-135m")
    assert smollm2.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smollm2.is_file()
    assert registry.model_paths("gemma3-270m") == (tmp_path / "models" / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf",)
    assert not registry.model_paths("gemma3-270m")[0].exists()  # model_paths never assembles


def test_embedded_context_length_comes_from_the_gguf_header(
    registry: Registry, embedded_registry: Registry, tmp_path: Path
) -> None:
    smollm2_path = registry.model_path("smollm2-135m")
    assert read_context_length(smollm2_path) == 8192
    assert registry.context_length("smollm2-135m") == 8192
    # A YAML value that differs from the header shows which source won.
    models = dict(embedded_registry.models)
    models["gemma3-270m"] = replace(models["gemma3-270m"], context_length=1234)
    tweaked = replace(embedded_registry, models=MappingProxyType(models))
    assert tweaked.context_length("gemma3-270m") == 32768
    absent = replace(tweaked, models_dir=tmp_path / "empty")
    assert absent.context_length("gemma3-270m") == 1234


def test_role_override_at_load(tmp_path: Path) -> None:
    registry = load_registry(models_dir=tmp_path, model_roles_override={LLAMA: ["fast"], DEEPSEEK: ["thinker"]})
    assert registry.model(LLAMA).roles == ("fast",)
    assert registry.model(DEEPSEEK).roles == ("thinker",)
    assert registry.model(PHI4).roles == SPEC_ROLES[PHI4]
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        load_registry(models_dir=tmp_path, model_roles_override={"nope": ["fast"]})
    with pytest.raises(ConfigError, match="unknown role 'wizard'"):
        load_registry(models_dir=tmp_path, model_roles_override={PHI4: ["wizard"]})


def test_resolve_active_defaults_to_e1(registry: Registry) -> None:
    active = resolve_active(registry, load_settings())
    assert (active.config, active.models, active.mode) == ("E1", ("smollm2-135m", "gemma3-270m"), "single")
    assert dict(active.roles) == {"smollm2-135m": ("fast", "primary"), "gemma3-270m": ("primary", "thinker", "coder")}
    assert active.overridden == frozenset()


def test_preload_models_replace_the_preset_models(registry: Registry) -> None:
    settings = load_settings(config="D3", preload_models="qwen2.5-7b,phi-4,qwen2.5-7b")
    active = resolve_active(registry, settings)
    assert active.models == (QWEN, PHI4)
    assert active.mode == "debate"
    # phi-4 (the preset's reconciler) is still loaded and has the primary role.
    assert dict(active.steps) == {"reconciler": PHI4}
    assert active.overridden == {"models"}


def test_mode_override_derives_steps_from_roles(registry: Registry) -> None:
    active = resolve_active(registry, load_settings(config="T1", orchestration_mode="critique"))
    assert active.mode == "critique"
    assert dict(active.steps) == {"generator": QWEN, "critic": PHI4}
    assert active.overridden == {"mode"}


def test_roles_override_applies_per_model(registry: Registry) -> None:
    settings = load_settings(config="D3", model_roles='{"deepseek-r1-7b": ["thinker", "longctx"]}')
    active = resolve_active(registry, settings)
    assert active.roles[DEEPSEEK] == ("thinker", "longctx")
    assert active.roles[PHI4] == SPEC_ROLES[PHI4]
    assert active.overridden == {"roles"}


def test_reconcile_setting_naming_a_model_beats_the_preset(registry: Registry) -> None:
    active = resolve_active(registry, load_settings(config="D3", debate_reconcile_model=DEEPSEEK))
    assert dict(active.steps) == {"reconciler": DEEPSEEK}
    synth = resolve_active(registry, load_settings(config="T7", ensemble_synthesis_model="longctx"))
    assert dict(synth.steps) == {"synthesizer": PHI3}


def test_pipeline_stages_setting_drops_unlisted_steps(registry: Registry) -> None:
    active = resolve_active(registry, load_settings(config="T1", pipeline_stages="draft,validate"))
    assert dict(active.steps) == {"drafter": LLAMA, "validator": PHI4}


def test_unknown_config_without_preload_is_an_error(registry: Registry) -> None:
    with pytest.raises(UnknownPresetError):
        build_active(registry, config="Z1")
    custom = build_active(registry, config="Z1", models=[LLAMA])
    assert (custom.models, custom.mode) == ((LLAMA,), "single")
