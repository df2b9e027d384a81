"""The one settings object, built from the ``INFERENCE_*`` environment at start-up."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OrchestrationMode = Literal["single", "critique", "debate", "ensemble", "pipeline"]
# How a batching llama.cpp worker lays out its KV cache across its slots (see `kv_cache` below).
KvCacheLayout = Literal["split", "per_slot", "shared"]
# When llama.cpp makes a context with its fused attention kernel (see `flash_attention` below).
FlashAttention = Literal["auto", "on", "off"]


def _default_memory_budget_mb() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 16_384
    # Leave a quarter of the machine to the OS and the fronts.
    return int(pages * page_size * 0.75 // (1024 * 1024))


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"INFERENCE_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore", populate_by_name=True)

    # Core
    port: int = 8085
    host: str = "0.0.0.0"
    log_level: str = "INFO"
    # "json": one JSON object per line with the request's id, model, worker and step (presets/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Redis: every key this service writes starts with key_prefix (see README).
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "inf"

    # Model storage and selection
    models_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "inference-service" / "models")
    config: str = "E1"
    preload_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    model_roles: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    memory_budget_mb: int = Field(default_factory=_default_memory_budget_mb)
    evict_lru: bool = False

    # Worker process
    worker_model: str | None = None
    worker_id: str | None = None
    n_threads: int | None = None
    # llama.cpp engines generating at once on one host split its cores between them
    # (worker/core_share.py); each holds a locked file in core_share_dir while it generates.
    share_cores: bool = True
    core_share_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "inference-cores")
    # None runs each model at its registry context; a number caps every model's (see presets.context).
    n_ctx: int | None = Field(default=None, ge=64)
    null_token_delay_ms: float = 0.0
    gpu_layers: int = -1
    # JSON: model id -> placement fields (gpu, gpu_layers, main_gpu, tensor_split, vllm_*) that win over
    # the registry's; see presets/placement.py.
    model_placement: Annotated[dict[str, dict[str, object]], NoDecode] = Field(default_factory=dict)
    # JSON GPU index -> MB the fleet may fill on that GPU of this host, beside the host budget.
    gpu_memory_budget_mb: Annotated[dict[int, int], NoDecode] = Field(default_factory=dict)
    # llama.cpp's repacked CPU weight layouts: "auto" turns them off on CPUs with AMX, whose
    # path crashes there (see worker/hardware.py); "on"/"off" force the choice.
    cpu_extra_buffers: Literal["auto", "on", "off"] = "auto"
    # llama.cpp's fused attention kernel: "auto" uses it where the device that holds the KV
    # cache runs it (every CPU does), "on"/"off" force it. Its float sums run in another order,
    # so temperature-0 text can differ at a near tie from a context made with it off.
    flash_attention: FlashAttention = "auto"
    # llama.cpp: one context decodes every concurrent job of the worker in one batch per
    # step; false gives each job a context (and a copy of the weights) of its own.
    batching: bool = True
    # Batching: "split" cuts the model's window into one KV stream per slot (memory of one
    # context; a job attends only to its own cells, so it decodes as fast as alone and its
    # temperature-0 text is the run alone's; a job can use the window ÷ slots). "per_slot": a
    # whole window per slot (memory times slots). "shared": llama.cpp's unified cache, every
    # job up to the whole window, but attention spans every cached cell, other slots' included.
    kv_cache: KvCacheLayout = "split"
    # "null" answers with fixed text at once: the queue-overhead benchmark's model.
    backend: Literal["llamacpp", "vllm", "null"] = "llamacpp"
    # vLLM only: a Hugging Face model id or folder to serve instead of the .gguf file, the
    # tokenizer to use with a .gguf file, and the share of GPU memory vLLM may take; a model's
    # own vllm_* placement fields win (presets/placement.py).
    vllm_model: str | None = None
    vllm_tokenizer: str | None = None
    vllm_gpu_memory_utilization: float = 0.9
    heartbeat_ttl_s: float = 5.0
    idle_poll_s: float = 1.0

    # Fleet supervisor: a crashed worker restarts after base, 2*base, ... up to cap seconds;
    # max_crashes within window seconds make the model unavailable until asked for again.
    worker_restart_base_s: float = 1.0
    worker_restart_cap_s: float = 30.0
    worker_max_crashes: int = 5
    worker_crash_window_s: float = 60.0

    # Orchestration
    orchestration_mode: OrchestrationMode | None = None
    critique_max_rounds: int = 2
    critique_threshold: float = 0.8
    debate_max_rounds: int = 3
    debate_reconcile_model: str = "primary"
    # 0: every loaded model debates; N keeps the N best-fitting (reasoning roles first) to bound
    # the memory and time of a round. The summary's models_used names who took part.
    debate_max_participants: int = Field(default=0, ge=0)
    debate_agreement_threshold: float = 0.8
    ensemble_min_agreement: float = 0.7
    ensemble_synthesis_model: str = "primary"
    pipeline_stages: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["draft", "refine", "validate"])
    dag_ttl_s: int = 3600
    # Token budgets of orchestration steps: critic and validator replies, and steps of a
    # request that set no max_tokens.
    judge_max_tokens: int = 512
    step_max_tokens: int = 1024

    # Request handling
    max_concurrent_requests: int = 10
    request_timeout_s: float = Field(default=120.0, validation_alias=_env("REQUEST_TIMEOUT"))
    max_concurrent_per_model: int = 1
    # A stream waits this long for a worker to accept its job before it opens (so errors
    # found on acceptance are HTTP statuses); a request queued longer streams its position.
    stream_accept_wait_s: float = 0.5
    # 0 streams every token as it comes; N sends what arrived within N ms together (the
    # first token always goes at once), trading chunk granularity for less work per token.
    stream_interval_ms: float = 0.0

    # Queue behaviour
    queue_strategy: Literal["fifo", "priority"] = "priority"
    reject_when_full: bool = True
    priority_enabled: bool = True
    priority_levels: int = 3
    default_priority: int = 2
    priority_ageing_s: float = 30.0

    # Auto-routing
    auto_route_enabled: bool = False
    auto_route_strategy: Literal["least_busy", "round_robin", "capability_match"] = "least_busy"
    auto_route_fallback: bool = True

    # Security and limits (docs/security.md). Bearer keys the front accepts, comma-separated so
    # a new key can go live before the old one is withdrawn; none leaves the front open.
    api_key: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A client that trickles its body is answered 408 once this has passed since the headers.
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    # A connection whose request line and headers are not complete this long after it opened
    # (or after its previous response) is closed; so is an idle keep-alive connection.
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)

    @field_validator("preload_models", "pipeline_stages", "api_key", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("model_roles", "model_placement", "gpu_memory_budget_mb", mode="before")
    @classmethod
    def _parse_roles(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("orchestration_mode", "worker_model", "n_ctx", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
