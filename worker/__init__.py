"""Model workers. `arq worker.Settings` starts one for the model in INFERENCE_WORKER_MODEL."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access so that importing the wire types does not load settings or models.
    if name == "Settings":
        from presets.settings import load_settings
        from worker.app import create_worker_settings

        settings_cls = create_worker_settings(load_settings())
        globals()["Settings"] = settings_cls
        return settings_cls
    raise AttributeError(name)
