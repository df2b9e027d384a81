"""Fixtures for the presets tests: registries over temporary model directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from presets.embedded import resolve_embedded
from presets.registry import Registry, load_registry


@pytest.fixture(autouse=True)
def _no_inference_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads INFERENCE_* settings; a developer's shell must not change results.
    for name in list(os.environ):
        if name.startswith("INFERENCE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def embedded_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with gemma3-270m assembled (250 MB, once per session)."""
    models_dir = tmp_path_factory.mktemp("embedded-models")
    resolve_embedded("gemma3-270m", models_dir=models_dir)
    return models_dir


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """The shipped registry over an empty model directory."""
    return load_registry(models_dir=tmp_path / "models")


@pytest.fixture
def embedded_registry(embedded_models_dir: Path) -> Registry:
    return load_registry(models_dir=embedded_models_dir)
