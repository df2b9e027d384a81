"""One worker process of the fleet: started, its stderr passed through, its end described."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

_LAST_LINE_MAX_CHARS = 300


@dataclass(kw_only=True)
class StderrTail:
    """Copies a child's stderr to ours line by line and keeps its last non-blank line."""

    last_line: str = ""
    _thread: threading.Thread | None = None

    def follow(self, stream: IO[bytes]) -> None:
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="worker stderr", daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.buffer.write(raw)
                    sys.stderr.buffer.flush()
                line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    self.last_line = line[:_LAST_LINE_MAX_CHARS]

    def wait(self, timeout_s: float) -> None:
        """Until the child's stderr is read to its end (it ends when the child exits)."""
        if self._thread is not None:
            self._thread.join(timeout_s)


@dataclass(kw_only=True)
class Child:
    model: str
    process: subprocess.Popen[bytes]
    stderr: StderrTail
    started_s: float = field(default_factory=time.monotonic)
    # Set once its worker registered as ready: from then on the control channel reaches it.
    ready: bool = False
    # When an unload asked the still-loading worker to stop (SIGKILL follows after a grace).
    stopping_since_s: float | None = None

    @classmethod
    def spawn(cls, model: str, *, extra_env: Mapping[str, str] | None = None) -> Child:
        # extra_env: the model's placement (CUDA_VISIBLE_DEVICES), see presets/placement.py.
        env = {**os.environ, **(extra_env or {}), "INFERENCE_WORKER_MODEL": model}
        # `python -m worker` is `arq worker.Settings` with a one-line error and exit 2 on bad setup.
        process = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stderr=subprocess.PIPE)
        tail = StderrTail()
        assert process.stderr is not None
        tail.follow(process.stderr)
        return cls(model=model, process=process, stderr=tail)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
