"""The context window each model runs at, and the memory a worker of it takes.

A worker runs its model at the registry's context length (the GGUF header's for embedded
models), capped by INFERENCE_N_CTX when that is set, and by INFERENCE_MEMORY_BUDGET_MB: the
largest window whose weights, KV cache and buffers still fit the budget.

The KV cache is counted per slot that owns a whole window: a batching worker whose slots split
one window (INFERENCE_KV_CACHE=split, the default) or share it (shared) holds one n_ctx cache
for all its slots (with split, one job can use n_ctx ÷ slots of it: the engine reports the
exact figure); with per_slot, and for the one-context-per-job llama.cpp engine, each slot
holds its own.
"""

from __future__ import annotations

import math

from presets.registry import ModelSpec, Registry
from presets.settings import Settings

# f16 K and V caches, llama.cpp's default cache type.
F16_BYTES = 2
# Below this a chat template and a short answer no longer fit; a budget that cannot hold
# even this much is left for the memory checks at load time to refuse.
MIN_CONTEXT_TOKENS = 512
# Windows are cut to a multiple of this, so a budget cap gives round numbers.
CONTEXT_STEP_TOKENS = 256


def kv_cache_bytes(
    *, n_layers: int, n_ctx: int, n_head_kv: int, head_dim: int, bytes_per_element: int = F16_BYTES, slots: int = 1
) -> int:
    """Bytes of K plus V cache: one K and one V row of n_head_kv x head_dim per layer and token."""
    return n_layers * n_ctx * (n_head_kv * head_dim) * 2 * bytes_per_element * slots


def kv_cache_slots(settings: Settings) -> int:
    """How many n_ctx-sized KV caches one worker holds."""
    slots = max(settings.max_concurrent_per_model, 1)
    if settings.backend == "vllm" or (settings.batching and settings.kv_cache != "per_slot"):
        # vLLM pages one pool across its sequences, as the shared llama.cpp cache does.
        return 1
    return slots


def weight_copies(settings: Settings) -> int:
    """How many copies of the weights one worker loads."""
    if settings.backend == "vllm" or settings.batching:
        return 1
    # The unbatched llama.cpp engine gives every concurrent job a model of its own.
    return max(settings.max_concurrent_per_model, 1)


def _fixed_mb(spec: ModelSpec, settings: Settings) -> int:
    # Weights plus compute buffers (5% of the weights + 64 MiB, as registry.memory_estimate_mb).
    return (spec.size_mb + math.ceil(spec.size_mb * 0.05) + 64) * weight_copies(settings)


def worker_memory_mb(spec: ModelSpec, *, n_ctx: int, settings: Settings) -> int:
    """Weights, KV cache for ``n_ctx`` per cache-owning slot, and buffers, in MiB."""
    kv_mb = math.ceil(spec.kv_cache_mb_per_1k_tokens * n_ctx / 1024) * kv_cache_slots(settings)
    return _fixed_mb(spec, settings) + kv_mb


def budget_context_tokens(spec: ModelSpec, *, settings: Settings) -> int:
    """The largest window (a multiple of CONTEXT_STEP_TOKENS) that fits INFERENCE_MEMORY_BUDGET_MB."""
    left_mb = settings.memory_budget_mb - _fixed_mb(spec, settings)
    per_token_mb = spec.kv_cache_mb_per_1k_tokens / 1024 * kv_cache_slots(settings)
    if per_token_mb <= 0:
        return spec.context_length
    tokens = int(max(left_mb, 0) / per_token_mb)
    return tokens - tokens % CONTEXT_STEP_TOKENS


def context_for(model_id: str, settings: Settings, registry: Registry) -> int:
    """The n_ctx a worker of ``model_id`` runs at: the model's own, capped by the setting and budget."""
    spec = registry.model(model_id)
    tokens = registry.context_length(model_id)
    if settings.n_ctx is not None:
        tokens = min(tokens, settings.n_ctx)
    tokens = min(tokens, max(budget_context_tokens(spec, settings=settings), MIN_CONTEXT_TOKENS))
    return tokens
