"""Which loaded model serves a request: model id, role name, or ``auto`` + task type.

Precedence: an explicit model id (optionally ``inference:`` / ``local:`` prefixed) wins;
then an explicit role name; then ``auto`` (or an empty name), which routes by task type.
A role resolves to a loaded model that has it, preferring models whose main (first)
role it is, then the order of ``loaded``; if none has it, the fallback role of the spec's
"Task Type -> Role Routing" table is tried (coder, thinker, fast -> primary;
longctx -> thinker; primary -> any loaded model).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from presets.errors import ModelNotLoadedError, UnknownModelError
from presets.roles import ROLES, pick_model

AUTO: Final = "auto"
MODEL_PREFIXES: Final[tuple[str, ...]] = ("inference:", "local:")

# Spec "Role Definitions" and "Task Type -> Role Routing" tables.
TASK_ROLES: Final[Mapping[str, str]] = {
    **dict.fromkeys(("general", "summarize", "explain", "chat"), "primary"),
    **dict.fromkeys(("simple", "quick", "classify", "extract"), "fast"),
    **dict.fromkeys(("code", "debug", "review", "refactor", "test"), "coder"),
    **dict.fromkeys(("analyze", "reason", "compare", "debate", "plan"), "thinker"),
    **dict.fromkeys(("document", "summarize_long", "rag"), "longctx"),
}

# None: the role falls back to any loaded model.
ROLE_FALLBACKS: Final[Mapping[str, str | None]] = {
    "coder": "primary",
    "thinker": "primary",
    "fast": "primary",
    "longctx": "thinker",
    "primary": None,
}


def strip_prefix(requested: str) -> str:
    name = requested.strip()
    for prefix in MODEL_PREFIXES:
        if name.lower().startswith(prefix):
            return name[len(prefix) :].strip()
    return name


def role_for_task(task_type: str | None) -> str:
    """The preferred role of a task type; unknown or missing task types get ``primary``."""
    if not task_type:
        return "primary"
    return TASK_ROLES.get(task_type.strip().lower().replace("-", "_"), "primary")


def route_role(role: str, *, loaded: Sequence[str], roles: Mapping[str, Sequence[str]]) -> str:
    """A loaded model for ``role``, following the fallback table; ModelNotLoadedError if none."""
    fallback = ROLE_FALLBACKS[role]
    chain = [role] if fallback is None else [role, fallback]
    chosen = pick_model(chain, loaded, roles)
    if chosen is not None:
        return chosen
    if fallback is None and loaded:
        return loaded[0]
    raise ModelNotLoadedError(role, loaded=loaded)


def resolve_model(
    requested: str,
    *,
    task_type: str | None,
    loaded: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    known: Collection[str] = (),
) -> str:
    """The model id that serves ``requested``.

    ``known`` lists every registry model id (pass ``registry.model_ids()``); ids in
    ``roles`` and ``loaded`` count as known too. Raises UnknownModelError for a name that
    is neither a known model, a role nor ``auto``, and ModelNotLoadedError for a known
    model (or a role) that no loaded model serves.
    """
    name = strip_prefix(requested)
    by_lower = {m.lower(): m for m in (*known, *roles, *loaded)}
    lowered = name.lower()
    if lowered in by_lower:
        model_id = by_lower[lowered]
        if model_id in loaded:
            return model_id
        raise ModelNotLoadedError(model_id, loaded=loaded)
    if lowered in ("", AUTO):
        role = role_for_task(task_type)
    elif lowered in ROLES:
        role = lowered
    else:
        raise UnknownModelError(name, known=by_lower.values())
    return route_role(role, loaded=loaded, roles=roles)
