"""Where a model runs: which GPU its worker sees, how llama.cpp spreads it, how vLLM loads it.

Fields, each optional:

- ``gpu``: the CUDA device index the worker process may see; the fleet supervisor sets
  ``CUDA_VISIBLE_DEVICES`` to it when it starts the worker, so inside the worker that GPU
  is device 0. Unset: the worker sees every GPU of the host.
- ``gpu_layers``: layers to offload (-1 all, 0 none); unset falls back to INFERENCE_GPU_LAYERS.
- ``main_gpu``: the device (as the worker sees them) holding the model when it is not split.
- ``tensor_split``: the share of the model per visible device, e.g. ``[0.67, 0.33]``.
- ``vllm_model``, ``vllm_tokenizer``, ``vllm_gpu_memory_utilization`` (INFERENCE_BACKEND=vllm):
  a Hugging Face id or folder to serve instead of the model's .gguf file, the tokenizer to use
  with a .gguf file, and the share (0 to 1] of the GPU's memory this worker's vLLM may take;
  vLLM counts the share per instance, so two workers on one GPU at 0.45 each fit side by side.
  Unset, each falls back to its INFERENCE_VLLM_* setting.

The registry (``placement:`` in models.yaml) gives each model's default; the JSON setting
INFERENCE_MODEL_PLACEMENT overrides it field by field, e.g.
``{"phi-4": {"gpu": 0, "gpu_layers": -1}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from presets.errors import ConfigError

if TYPE_CHECKING:
    from presets.registry import Registry
    from presets.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Placement:
    gpu: int | None = None
    gpu_layers: int | None = None
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] | None = None
    vllm_model: str | None = None
    vllm_tokenizer: str | None = None
    vllm_gpu_memory_utilization: float | None = None

    def worker_env(self) -> dict[str, str]:
        """Environment the supervisor adds for this model's worker process."""
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": str(self.gpu)}

    def layers(self, *, default: int) -> int:
        return default if self.gpu_layers is None else self.gpu_layers


_FIELDS = tuple(f.name for f in fields(Placement))
_TEXT_FIELDS = ("vllm_model", "vllm_tokenizer")


def _index(value: object, *, where: str, key: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ConfigError(f"{where}: {key} must be an integer of at least {lowest}, got {value!r}")
    return value


def parse_placement(raw: Mapping[str, object], *, where: str) -> dict[str, object]:
    """Checked placement fields, only those ``raw`` sets (so an override can set just one)."""
    unknown = [key for key in raw if key not in _FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown placement field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
    parsed: dict[str, object] = {}
    for key, value in raw.items():
        if key == "tensor_split":
            shares = value if isinstance(value, list) else None
            if not shares or not all(isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in shares):
                raise ConfigError(f"{where}: tensor_split must be a list of non-negative shares, got {value!r}")
            parsed[key] = tuple(float(s) for s in shares)
        elif key in _TEXT_FIELDS:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
            parsed[key] = value.strip()
        elif key == "vllm_gpu_memory_utilization":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ConfigError(f"{where}: {key} must be a share of GPU memory in (0, 1], got {value!r}")
            parsed[key] = float(value)
        else:
            parsed[key] = _index(value, where=where, key=key, lowest=-1 if key == "gpu_layers" else 0)
    return parsed


def placement_from(raw: object, *, where: str) -> Placement:
    if raw is None:
        return Placement()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: placement must be a mapping of {', '.join(_FIELDS)}")
    return Placement(**parse_placement(raw, where=where))  # type: ignore[arg-type]


def placement_for(model_id: str, settings: Settings, registry: Registry) -> Placement:
    """The registry's placement of a model with INFERENCE_MODEL_PLACEMENT's fields on top."""
    unknown = [m for m in settings.model_placement if m not in registry.models]
    if unknown:
        known = ", ".join(sorted(registry.models))
        raise ConfigError(f"INFERENCE_MODEL_PLACEMENT names unknown model {unknown[0]!r} (known: {known})")
    base = registry.model(model_id).placement
    override = settings.model_placement.get(model_id)
    if not override:
        return base
    where = f"INFERENCE_MODEL_PLACEMENT[{model_id!r}]"
    return replace(base, **parse_placement(override, where=where))  # type: ignore[arg-type]
