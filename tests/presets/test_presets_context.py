"""Each model's context window and the memory its worker takes, KV cache counted per slot."""

from __future__ import annotations

from pathlib import Path

import pytest

from presets.context import MIN_CONTEXT_TOKENS, context_for, kv_cache_bytes, worker_memory_mb
from presets.registry import Registry, load_registry
from presets.settings import Settings

MIB = 1024 * 1024
BIG_BUDGET_MB = 1_000_000


@pytest.fixture
def registry() -> Registry:
    return load_registry(models_dir=Path("/nonexistent"))


def _settings(**options: object) -> Settings:
    return Settings(**{"memory_budget_mb": BIG_BUDGET_MB, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "n_layers", "n_head_kv", "head_dim"),
    [("phi-4", 40, 10, 128), ("phi-3-medium-128k", 40, 10, 128), ("llama-3.2-3b", 28, 8, 128)],
)
def test_registry_kv_figures_follow_the_model_shape(
    registry: Registry, model: str, n_layers: int, n_head_kv: int, head_dim: int
) -> None:
    per_1k = kv_cache_bytes(n_layers=n_layers, n_ctx=1024, n_head_kv=n_head_kv, head_dim=head_dim)
    assert per_1k / MIB == registry.model(model).kv_cache_mb_per_1k_tokens


def test_kv_cache_grows_with_slots_and_element_size() -> None:
    one = kv_cache_bytes(n_layers=2, n_ctx=100, n_head_kv=4, head_dim=8)
    assert one == 2 * 100 * 32 * 2 * 2
    assert kv_cache_bytes(n_layers=2, n_ctx=100, n_head_kv=4, head_dim=8, slots=3) == 3 * one
    assert kv_cache_bytes(n_layers=2, n_ctx=100, n_head_kv=4, head_dim=8, bytes_per_element=1) == one // 2


def test_each_model_runs_at_its_own_context(registry: Registry) -> None:
    settings = _settings()
    assert settings.n_ctx is None
    assert context_for("phi-3-medium-128k", settings, registry) == 131072
    assert context_for("phi-4", settings, registry) == 16384
    assert context_for("llama-3.2-3b", settings, registry) == 8192


def test_the_n_ctx_setting_caps_but_never_raises(registry: Registry) -> None:
    settings = _settings(n_ctx=4096)
    assert context_for("phi-3-medium-128k", settings, registry) == 4096
    assert context_for("llama-3.2-3b", _settings(n_ctx=65536), registry) == 8192


def test_the_memory_budget_caps_the_window(registry: Registry) -> None:
    # phi-3: 7575 MiB of weights and buffers; 8809 MiB left holds 45102 tokens at 200 MiB per 1K.
    settings = _settings(memory_budget_mb=16384)
    assert context_for("phi-3-medium-128k", settings, registry) == 45056
    spec = registry.model("phi-3-medium-128k")
    assert worker_memory_mb(spec, n_ctx=45056, settings=settings) <= 16384
    assert worker_memory_mb(spec, n_ctx=45056 + 256, settings=settings) > 16384


def test_a_cache_per_slot_shrinks_the_window(registry: Registry) -> None:
    split = _settings(memory_budget_mb=16384, max_concurrent_per_model=4)
    shared = _settings(memory_budget_mb=16384, max_concurrent_per_model=4, kv_cache="shared")
    own = _settings(memory_budget_mb=16384, max_concurrent_per_model=4, kv_cache="per_slot")
    assert context_for("phi-3-medium-128k", split, registry) == 45056
    assert context_for("phi-3-medium-128k", shared, registry) == 45056
    assert context_for("phi-3-medium-128k", own, registry) == 11264


def test_unbatched_workers_count_weights_and_cache_per_job(registry: Registry) -> None:
    spec = registry.model("llama-3.2-3b")
    batched = worker_memory_mb(spec, n_ctx=4096, settings=_settings(max_concurrent_per_model=2))
    unbatched = worker_memory_mb(spec, n_ctx=4096, settings=_settings(max_concurrent_per_model=2, batching=False))
    assert batched == spec.memory_estimate_mb(n_ctx=4096)
    assert unbatched == 2 * batched


def test_a_budget_too_small_leaves_the_floor(registry: Registry) -> None:
    assert context_for("phi-4", _settings(memory_budget_mb=1000), registry) == MIN_CONTEXT_TOKENS


def test_blank_n_ctx_means_the_models_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_N_CTX", "")
    assert Settings().n_ctx is None
    monkeypatch.setenv("INFERENCE_N_CTX", "2048")
    assert Settings().n_ctx == 2048
