"""resolve_model against the spec's task-type and role tables."""

from __future__ import annotations

import pytest

from presets.errors import ModelNotLoadedError, UnknownModelError
from presets.registry import Registry
from presets.routing import resolve_model, role_for_task

ALL5 = ["phi-4", "deepseek-r1-7b", "qwen2.5-7b", "llama-3.2-3b", "phi-3-medium-128k"]


@pytest.fixture
def roles(registry: Registry) -> dict[str, tuple[str, ...]]:
    return registry.roles_by_model()


@pytest.mark.parametrize(
    ("task_type", "expected"),
    [
        ("code", "qwen2.5-7b"),
        ("debug", "qwen2.5-7b"),
        ("refactor", "qwen2.5-7b"),
        ("review", "qwen2.5-7b"),
        ("test", "qwen2.5-7b"),
        ("analyze", "deepseek-r1-7b"),
        ("reason", "deepseek-r1-7b"),
        ("plan", "deepseek-r1-7b"),
        ("compare", "deepseek-r1-7b"),
        ("debate", "deepseek-r1-7b"),
        ("simple", "llama-3.2-3b"),
        ("classify", "llama-3.2-3b"),
        ("extract", "llama-3.2-3b"),
        ("quick", "llama-3.2-3b"),
        ("document", "phi-3-medium-128k"),
        ("summarize_long", "phi-3-medium-128k"),
        ("summarize-long", "phi-3-medium-128k"),
        ("rag", "phi-3-medium-128k"),
        ("general", "phi-4"),
        ("summarize", "phi-4"),
        ("explain", "phi-4"),
        ("chat", "phi-4"),
        ("poetry", "phi-4"),
        (None, "phi-4"),
    ],
)
def test_auto_routes_by_task_type_with_all_models_loaded(
    roles: dict[str, tuple[str, ...]], task_type: str | None, expected: str
) -> None:
    # With everything loaded each role goes to the model whose main role it is.
    assert resolve_model("auto", task_type=task_type, loaded=ALL5, roles=roles) == expected


@pytest.mark.parametrize(
    ("loaded", "task_type", "expected"),
    [
        (["llama-3.2-3b"], "code", "llama-3.2-3b"),  # coder -> primary
        (["phi-4", "llama-3.2-3b"], "code", "phi-4"),  # phi-4 has coder as a secondary role
        (["llama-3.2-3b", "deepseek-r1-7b"], "document", "deepseek-r1-7b"),  # longctx -> thinker
        (["qwen2.5-7b", "deepseek-r1-7b"], "simple", "qwen2.5-7b"),  # qwen is fast too
        (["deepseek-r1-7b", "llama-3.2-3b"], "general", "deepseek-r1-7b"),  # neither is primary-first: load order
        (["llama-3.2-3b", "deepseek-r1-7b"], "general", "llama-3.2-3b"),
        (["smollm2-135m", "gemma3-270m"], "document", "gemma3-270m"),  # longctx -> thinker
        (["smollm2-135m", "gemma3-270m"], "simple", "smollm2-135m"),
        (["smollm2-135m", "gemma3-270m"], None, "gemma3-270m"),
    ],
)
def test_fallbacks_when_the_preferred_role_is_not_loaded(
    roles: dict[str, tuple[str, ...]], loaded: list[str], task_type: str, expected: str
) -> None:
    assert resolve_model("auto", task_type=task_type, loaded=loaded, roles=roles) == expected


def test_primary_falls_back_to_any_loaded_model(roles: dict[str, tuple[str, ...]]) -> None:
    narrowed = {**roles, "deepseek-r1-7b": ("thinker",)}
    assert resolve_model("", task_type="chat", loaded=["deepseek-r1-7b"], roles=narrowed) == "deepseek-r1-7b"


def test_fallback_chain_ends_in_model_not_loaded(roles: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ModelNotLoadedError) as caught:
        resolve_model("auto", task_type="document", loaded=["llama-3.2-3b"], roles=roles)
    assert caught.value.model_id == "longctx"
    assert caught.value.loaded == ("llama-3.2-3b",)


@pytest.mark.parametrize("requested", ["phi-4", "inference:phi-4", "local:phi-4", "Phi-4", " LOCAL:phi-4 "])
def test_explicit_model_id_wins_over_task_type(roles: dict[str, tuple[str, ...]], requested: str) -> None:
    assert resolve_model(requested, task_type="simple", loaded=ALL5, roles=roles) == "phi-4"


def test_explicit_role_wins_over_task_type(roles: dict[str, tuple[str, ...]]) -> None:
    assert resolve_model("thinker", task_type="simple", loaded=ALL5, roles=roles) == "deepseek-r1-7b"
    assert resolve_model("local:coder", task_type=None, loaded=ALL5, roles=roles) == "qwen2.5-7b"
    assert resolve_model("longctx", task_type=None, loaded=["phi-4"], roles=roles) == "phi-4"


def test_known_model_that_is_not_loaded(roles: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ModelNotLoadedError) as caught:
        resolve_model("inference:qwen2.5-7b", task_type="code", loaded=["phi-4"], roles=roles)
    assert caught.value.model_id == "qwen2.5-7b"


def test_known_list_extends_the_roles_mapping() -> None:
    with pytest.raises(ModelNotLoadedError):
        resolve_model("phi-4", task_type=None, loaded=["llama-3.2-3b"], roles={}, known=["phi-4"])


def test_unknown_name_raises_unknown_model(roles: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(UnknownModelError) as caught:
        resolve_model("inference:gpt-4", task_type=None, loaded=ALL5, roles=roles)
    assert caught.value.model_id == "gpt-4"


def test_role_for_task_defaults_to_primary() -> None:
    assert role_for_task("CODE") == "coder"
    assert role_for_task("unheard-of") == "primary"
    assert role_for_task(None) == "primary"
