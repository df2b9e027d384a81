"""Model workers. `arq worker.Settings` starts one for the model in INFERENCE_WORKER_MODEL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.app import MakeStepHooks


def __getattr__(name: str) -> Any:
    # Built on first access so that importing the wire types does not load settings or models.
    if name == "Settings":
        from presets.settings import load_settings
        from worker.app import create_worker_settings

        settings_cls = create_worker_settings(load_settings(), make_steps=orchestration_steps())
        globals()["Settings"] = settings_cls
        return settings_cls
    raise AttributeError(name)


def orchestration_steps() -> MakeStepHooks:
    """The worker's part in orchestration DAGs (worker.app.StepHooks).

    The entry points compose the two packages here: orchestration builds on the worker's queue
    and wire types, and no module of the worker imports orchestration.
    """
    from arq.connections import ArqRedis

    from orchestration.steps import DagSteps
    from presets.settings import Settings
    from worker.keys import Keys

    def make(redis: ArqRedis, keys: Keys, settings: Settings) -> DagSteps:
        return DagSteps(redis, keys=keys, settings=settings)

    return make
