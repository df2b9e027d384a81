"""Per-model placement: the registry's two-GPU layout and the JSON override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presets.errors import ConfigError
from presets.placement import Placement, placement_for
from presets.registry import Registry, load_registry
from presets.settings import Settings


@pytest.fixture
def registry() -> Registry:
    return load_registry(models_dir=Path("/nonexistent"))


def test_the_registry_carries_the_specs_two_gpu_layout(registry: Registry) -> None:
    settings = Settings()
    by_gpu: dict[int | None, list[str]] = {}
    for model in registry.models:
        by_gpu.setdefault(placement_for(model, settings, registry).gpu, []).append(model)
    assert sorted(by_gpu[0]) == ["deepseek-r1-7b", "phi-3-medium-128k", "phi-4"]
    assert sorted(by_gpu[1]) == ["llama-3.2-3b", "qwen2.5-7b"]
    assert sorted(by_gpu[None]) == ["gemma3-270m", "smollm2-135m"]
    assert placement_for("qwen2.5-7b", settings, registry).worker_env() == {"CUDA_VISIBLE_DEVICES": "1"}
    assert placement_for("smollm2-135m", settings, registry).worker_env() == {}


def test_the_override_replaces_only_the_fields_it_sets(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv(
        "INFERENCE_MODEL_PLACEMENT", '{"phi-4": {"gpu": 1, "gpu_layers": 20}, "llama-3.2-3b": {"tensor_split": [3, 1]}}'
    )
    settings = Settings()
    assert placement_for("phi-4", settings, registry) == Placement(gpu=1, gpu_layers=20)
    llama = placement_for("llama-3.2-3b", settings, registry)
    assert llama == Placement(gpu=1, gpu_layers=-1, tensor_split=(3.0, 1.0))
    assert placement_for("phi-3-medium-128k", settings, registry).gpu == 0
    assert Placement().layers(default=-1) == -1 and llama.layers(default=0) == -1


def test_the_override_sets_a_models_vllm_settings(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    # Two vLLM workers on one GPU: vLLM counts the memory share per instance.
    half = {"vllm_gpu_memory_utilization": 0.45, "vllm_tokenizer": "Qwen/Qwen2.5-7B-Instruct"}
    monkeypatch.setenv("INFERENCE_MODEL_PLACEMENT", json.dumps({"qwen2.5-7b": half, "llama-3.2-3b": half}))
    for model in ("qwen2.5-7b", "llama-3.2-3b"):
        assert placement_for(model, Settings(), registry) == Placement(gpu=1, gpu_layers=-1, **half)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"phi-5": {"gpu": 0}}', "unknown model 'phi-5'"),
        ('{"phi-4": {"gpus": 0}}', "unknown placement field 'gpus'"),
        ('{"phi-4": {"gpu": -1}}', "gpu must be an integer of at least 0"),
        ('{"phi-4": {"gpu_layers": "all"}}', "gpu_layers must be an integer of at least -1"),
        ('{"phi-4": {"tensor_split": []}}', "tensor_split must be a list"),
        ('{"phi-4": {"vllm_model": ""}}', "vllm_model must be a non-empty string"),
        ('{"phi-4": {"vllm_tokenizer": 3}}', "vllm_tokenizer must be a non-empty string"),
        ('{"phi-4": {"vllm_gpu_memory_utilization": 0}}', r"vllm_gpu_memory_utilization must be a share .* \(0, 1\]"),
        ('{"phi-4": {"vllm_gpu_memory_utilization": 1.5}}', "vllm_gpu_memory_utilization must be a share"),
    ],
)
def test_bad_overrides_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, registry: Registry, value: str, expected: str
) -> None:
    monkeypatch.setenv("INFERENCE_MODEL_PLACEMENT", value)
    with pytest.raises(ConfigError, match=expected) as caught:
        placement_for("phi-4", Settings(), registry)
    assert "\n" not in str(caught.value)
