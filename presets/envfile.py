"""`.env.example` from the Settings class: every INFERENCE_* variable, its default, its meaning.

`python -m presets envfile > .env.example` writes it; tests/presets/test_envfile.py fails when
the file, or the README's configuration table, misses a setting. A new setting needs a line
in MEANINGS (or a Field description), and the file regenerated.
"""

from __future__ import annotations

import json

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from presets.settings import Settings

# Defaults computed where the service runs: the example names them rather than this machine's value.
_DYNAMIC_DEFAULTS = {
    "models_dir": "~/.cache/inference-service/models",
    "memory_budget_mb": "75% of the machine's RAM",
}

MEANINGS: dict[str, str] = {
    "port": "Port the front listens on.",
    "host": "Address the front listens on.",
    "log_level": "Log level: DEBUG, INFO, WARNING, ERROR.",
    "log_format": "text (readable) or json (one object per line with request_id, model, worker_id, step).",
    "redis_url": (
        "Redis holding the queues, the workers' registry, the DAGs and the metrics;"
        " unix:///path/redis.sock?db=N for one on the same host."
    ),
    "key_prefix": "Prefix of every Redis key and channel the service uses.",
    "models_dir": "Model files, as <dir>/<model id>/<file>.",
    "config": "Active preset (S1-S5, D1-D10, T1-T10, Q1-Q5, P1-P3, E1-E5).",
    "preload_models": "Comma list of models to run; overrides the preset's.",
    "model_roles": "JSON model -> list of roles; overrides the registry's.",
    "memory_budget_mb": "Memory the fleet supervisor may fill with workers on this host.",
    "evict_lru": "A load over the budget first unloads the least recently used idle models.",
    "worker_model": "The model a worker serves (arq worker.Settings, python -m worker).",
    "worker_id": "A worker's id in the registry (default host-pid).",
    "n_threads": "llama.cpp CPU threads per worker (default every core); the most a shared core split gives.",
    "share_cores": "llama.cpp engines generating at once on one host split its cores between them.",
    "core_share_dir": "Host-wide folder of the locked files through which engines count each other.",
    "n_ctx": "Context length cap for every model (default each model's registry context).",
    "null_token_delay_ms": "Null backend: milliseconds per token (queue tests and benchmarks).",
    "gpu_layers": "llama.cpp layers offloaded to the GPU (-1 all, 0 none).",
    "model_placement": (
        "JSON model -> placement (gpu, gpu_layers, main_gpu, tensor_split, vllm_*) over the registry's."
    ),
    "gpu_memory_budget_mb": "JSON GPU index -> MB the supervisor may fill on that GPU (models placed there).",
    "cpu_extra_buffers": "llama.cpp repacked CPU weight layouts: auto (off on AMX CPUs), on, off.",
    "flash_attention": "llama.cpp's flash attention: auto (where the KV cache's device runs it), on, off.",
    "batching": "llama.cpp: a worker's concurrent jobs decode in one batched context.",
    "kv_cache": "Batching KV cache: split (the window cut into one per slot), per_slot (memory times slots), shared.",
    "backend": "llamacpp, vllm, or null (fixed text at once, for tests and benchmarks).",
    "vllm_model": "vLLM: a Hugging Face model id or folder to serve instead of the .gguf file.",
    "vllm_tokenizer": "vLLM: the tokenizer to use with a .gguf file.",
    "vllm_gpu_memory_utilization": "vLLM: share of GPU memory it may take.",
    "heartbeat_ttl_s": "Seconds a worker's registration lives without a heartbeat.",
    "idle_poll_s": "Fallback queue poll of an idle worker when its wake channel is lost.",
    "worker_restart_base_s": "Fleet: first wait before restarting a crashed worker (doubles).",
    "worker_restart_cap_s": "Fleet: longest wait before restarting a crashed worker.",
    "worker_max_crashes": "Fleet: crashes within the window that make a model unavailable.",
    "worker_crash_window_s": "Fleet: the window in seconds for counting crashes.",
    "orchestration_mode": "single, critique, debate, ensemble or pipeline; overrides the preset's.",
    "critique_max_rounds": "Critique: most critique-and-revise rounds.",
    "critique_threshold": "Critique: score (0-1) at which the answer is good enough.",
    "debate_max_rounds": "Debate: most rounds.",
    "debate_reconcile_model": "Debate: role of the model that writes the final answer.",
    "debate_max_participants": "Debate: 0 lets every loaded model take part; N keeps the N best-fitting.",
    "debate_agreement_threshold": "Debate: agreement (0-1) at which the debate stops.",
    "ensemble_min_agreement": "Ensemble: below this agreement the answer is marked low_confidence.",
    "ensemble_synthesis_model": "Ensemble: role of the model that synthesizes the answers.",
    "pipeline_stages": "Pipeline: comma list of stages.",
    "dag_ttl_s": "Seconds an orchestration DAG's keys stay in Redis.",
    "judge_max_tokens": "Token budget of critic and validator replies.",
    "step_max_tokens": "Token budget of orchestration steps when the request sets none.",
    "max_concurrent_requests": "Requests queued or running at once, over all fronts.",
    "request_timeout_s": "Seconds a request may take from arrival to its last token.",
    "max_concurrent_per_model": "Jobs one worker runs at once.",
    "stream_accept_wait_s": "Seconds a stream waits for a worker before it opens with queue positions.",
    "stream_interval_ms": "0 streams each token; N sends the tokens of each N ms together.",
    "queue_strategy": "priority or fifo.",
    "reject_when_full": "A full service answers 429 (false: the request waits for a slot).",
    "priority_enabled": "Honour request priorities (false: FIFO).",
    "priority_levels": "Number of priority levels (1 lowest).",
    "default_priority": "Priority of a request that sets none.",
    "priority_ageing_s": "Seconds of waiting that lift a job one priority level.",
    "auto_route_enabled": "Route role and auto requests to one of the loaded models with the role.",
    "auto_route_strategy": "least_busy, round_robin or capability_match.",
    "auto_route_fallback": "A request for a model that is not loaded goes to a loaded model sharing its role.",
    "api_key": "Comma list of accepted bearer keys; unset, the front is open.",
    "max_body_bytes": "Larger request bodies are a 413.",
    "body_read_timeout_s": "A body still arriving this long after the headers is a 408.",
    "header_read_timeout_s": "A request line and headers not complete within this are closed.",
    "keep_alive_timeout_s": "Idle keep-alive connections close after this.",
    "max_header_bytes": "Largest request line and headers.",
}


def env_name(name: str, info: FieldInfo) -> str:
    """The variable a setting is read from (a few keep an older name through an alias)."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"INFERENCE_{name.upper()}"


def env_names() -> dict[str, str]:
    return {name: env_name(name, info) for name, info in Settings.model_fields.items()}


def default_text(name: str, info: FieldInfo) -> str:
    """The default as the variable would spell it; empty when unset means none."""
    value = info.default if info.default is not PydanticUndefined else info.get_default(call_default_factory=True)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value) if value else ""
    return str(value)


def meaning(name: str, info: FieldInfo) -> str:
    return info.description or MEANINGS.get(name, "")


def render() -> str:
    """The whole `.env.example`: commented out, so that a copy changes nothing until edited."""
    lines = [
        "# inference-service settings: every INFERENCE_* variable with its default.",
        "# Copy to .env, uncomment what you change. Generated by `python -m presets envfile`.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        lines.append(f"# {meaning(name, info) or name}")
        if name in _DYNAMIC_DEFAULTS:
            lines.append(f"# default: {_DYNAMIC_DEFAULTS[name]}")
            lines.append(f"# {env_name(name, info)}=")
        else:
            lines.append(f"# {env_name(name, info)}={default_text(name, info)}")
        lines.append("")
    return "\n".join(lines)
