"""The registry's chat fields: each model family's tool-call format and whether it thinks first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from presets import registry as registry_module
from presets.errors import ConfigError
from presets.registry import TOOL_FORMATS, Registry, load_model_specs


def test_every_shipped_model_names_its_tool_format_and_whether_it_reasons(registry: Registry) -> None:
    formats = {model_id: (spec.tool_format, spec.reasoning) for model_id, spec in registry.models.items()}
    assert formats == {
        "phi-4": ("phi4", False),
        "deepseek-r1-7b": ("hermes", True),
        "qwen2.5-7b": ("hermes", False),
        "llama-3.2-3b": ("llama3", False),
        "phi-3-medium-128k": ("phi4", False),
        "smollm2-135m": ("hermes", False),
        "gemma3-270m": ("hermes", False),
    }
    assert load_model_specs()["deepseek-r1-7b"] == registry.model("deepseek-r1-7b")


def write_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: object) -> None:
    shipped = yaml.safe_load(registry_module.MODELS_YAML.read_text(encoding="utf-8"))
    model = shipped["models"]["smollm2-135m"]
    for key in ("tool_format", "reasoning"):
        model.pop(key, None)
    model.update(fields)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"smollm2-135m": model}}), encoding="utf-8")
    monkeypatch.setattr(registry_module, "MODELS_YAML", path)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tool_format": "chatml"}, "unknown tool_format 'chatml' \\(tool formats: hermes, llama3, phi4\\)"),
        ({"tool_format": 3}, "unknown tool_format 3"),
        ({"reasoning": "yes"}, "reasoning must be true or false, not 'yes'"),
    ],
)
def test_unknown_values_are_one_line_errors_naming_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, object], expected: str
) -> None:
    write_models(tmp_path, monkeypatch, **fields)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_model_specs()
    assert "model 'smollm2-135m'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_left_out_fields_leave_it_to_the_chat_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_models(tmp_path, monkeypatch)
    spec = load_model_specs()["smollm2-135m"]
    assert (spec.tool_format, spec.reasoning) == (None, None)
    write_models(tmp_path, monkeypatch, tool_format="llama3", reasoning=True)
    spec = load_model_specs()["smollm2-135m"]
    assert (spec.tool_format, spec.reasoning) == ("llama3", True)
    assert set(TOOL_FORMATS) == {"hermes", "llama3", "phi4"}
