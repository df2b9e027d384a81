"""`python -m worker`: the same worker as `arq worker.Settings`, with a readable start-up error."""

from __future__ import annotations

import sys

from arq.worker import run_worker

from presets.embedded import EmbeddedModelMissing
from presets.errors import PresetsError
from presets.logs import configure_logging
from presets.settings import load_settings
from worker import orchestration_steps
from worker.app import WorkerSetupError, create_worker_settings


def main() -> int:
    settings = load_settings()
    configure_logging(settings)
    try:
        run_worker(create_worker_settings(settings, make_steps=orchestration_steps()))
    except (WorkerSetupError, PresetsError, EmbeddedModelMissing) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
