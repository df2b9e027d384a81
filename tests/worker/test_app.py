"""load_engines hands each model's resolved placement and vLLM settings to its engines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from presets.context import context_for
from presets.registry import load_registry
from presets.settings import Settings
from tests.worker import fake_vllm
from worker import app


class Captured:
    """An engine class that keeps its keyword arguments instead of loading a model."""

    calls: list[dict[str, Any]]

    def __init__(self, **options: Any) -> None:
        self.calls.append(options)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    engine = type("Engine", (Captured,), {"calls": calls})
    monkeypatch.setattr(app, "LlamaEngine", engine)
    monkeypatch.setattr("worker.batched_engine.BatchedLlamaEngine", engine)
    return calls


def settings(tmp_path: Path, **options: object) -> Settings:
    return Settings(models_dir=tmp_path, memory_budget_mb=65_536, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("batching", [True, False])
def test_a_models_placement_reaches_its_llama_engine(
    tmp_path: Path, captured: list[dict[str, Any]], batching: bool
) -> None:
    placement = {"smollm2-135m": {"gpu_layers": 12, "main_gpu": 1, "tensor_split": [1, 3]}}
    app.load_engines(settings(tmp_path, batching=batching, gpu_layers=-1, model_placement=placement), "smollm2-135m")
    assert captured
    for options in captured:
        assert (options["gpu_layers"], options["main_gpu"], options["tensor_split"]) == (12, 1, (1.0, 3.0))


def test_without_placement_inference_gpu_layers_is_the_default(tmp_path: Path, captured: list[dict[str, Any]]) -> None:
    app.load_engines(settings(tmp_path, gpu_layers=7), "smollm2-135m")
    assert [(o["gpu_layers"], o["main_gpu"], o["tensor_split"]) for o in captured] == [(7, None, None)]


@pytest.mark.parametrize("batching", [True, False])
def test_every_llama_engine_of_a_worker_shares_the_hosts_cores(
    tmp_path: Path, captured: list[dict[str, Any]], batching: bool
) -> None:
    cores = tmp_path / "cores"
    chosen = settings(tmp_path, batching=batching, n_threads=2, core_share_dir=cores, max_concurrent_per_model=2)
    app.load_engines(chosen, "smollm2-135m")
    assert captured
    for options in captured:
        assert options["n_threads"] == 2
        assert options["core_share"].directory == cores
        assert options["core_share"].max_threads == 2


def test_a_models_vllm_settings_reach_its_vllm_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules, built = fake_vllm.modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    override = {"qwen2.5-7b": {"vllm_model": "Qwen/Qwen2.5-7B-Instruct", "vllm_gpu_memory_utilization": 0.45}}
    monkeypatch.setenv("INFERENCE_MODEL_PLACEMENT", json.dumps(override))
    chosen = settings(tmp_path, backend="vllm", max_concurrent_per_model=4, vllm_tokenizer="Qwen/Qwen2.5-7B-Instruct")
    engines = app.load_engines(chosen, "qwen2.5-7b")
    try:
        # One engine serves every slot; the model needs no .gguf file when vLLM loads it from the hub.
        assert len(engines) == 4 and len({id(e) for e in engines}) == 1
        args = built[-1].args
        assert (args.model, args.tokenizer, args.gpu_memory_utilization) == (
            "Qwen/Qwen2.5-7B-Instruct",
            "Qwen/Qwen2.5-7B-Instruct",
            0.45,
        )
        assert args.max_model_len == context_for("qwen2.5-7b", chosen, load_registry(models_dir=tmp_path))
    finally:
        engines[0].close()
