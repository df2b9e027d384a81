"""The host's cores, split among the llama.cpp engines that are generating on it.

ggml's CPU threads spin at every barrier of a decode step. Two workers on one host, each
decoding with a thread per core (a debate's round: every participant's model at once), put
twice as many spinning threads as cores on the machine, and each barrier waits for a thread
that the other process's spinning keeps off its core: on 2 cores such a round ran 3.5 to 9
times slower than one model alone. With one thread each, the two decode side by side.

So an engine takes a *seat* while it generates: a file of its own in one host-wide folder,
held under an exclusive flock. Now and then (`refresh_s`) a seat counts the files whose lock
is held and decodes with cores ÷ that count threads (at least one, at most the worker's
INFERENCE_N_THREADS). An engine alone keeps every core. The kernel drops a dead process's
locks, so a crashed worker is not counted; the next count removes its file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_SUFFIX = ".seat"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
        return os.cpu_count() or 1


class CoreShare:
    """Hands out seats; `directory=None` gives every seat `max_threads`, whoever else runs."""

    def __init__(
        self,
        *,
        directory: Path | None,
        cores: int,
        max_threads: int,
        refresh_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.cores = max(cores, 1)
        self.max_threads = max(max_threads, 1)
        self.refresh_s = refresh_s
        self.clock = clock

    @classmethod
    def fixed(cls, threads: int) -> CoreShare:
        return cls(directory=None, cores=threads, max_threads=threads)

    def seat(self) -> Seat:
        return Seat(self)

    def threads_for(self, generating: int) -> int:
        return max(1, min(self.max_threads, self.cores // max(generating, 1)))


class Seat:
    """One generating engine's place among the host's engines; a context manager."""

    def __init__(self, share: CoreShare) -> None:
        self._share = share
        self._fd: int | None = None
        self._name = ""
        self._threads = share.max_threads
        self._counted_at = float("-inf")
        # The thread count last given to the llama.cpp context that this seat decodes with.
        self._applied: int | None = None
        if share.directory is not None:
            self._take(share.directory)

    def _take(self, directory: Path) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Locked before it gets the name that others count, so no count finds it unlocked.
            staging = directory / f"{name}.tmp"
            fd = os.open(staging, os.O_CREAT | os.O_RDWR, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(staging, directory / f"{name}{_SUFFIX}")
        except OSError as exc:
            threads = self._share.max_threads
            logger.warning("cannot share the cores through %s (%s): decoding with %d threads", directory, exc, threads)
            return
        self._fd, self._name = fd, f"{name}{_SUFFIX}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def threads(self) -> int:
        """Threads to decode with now; counts the seats again once `refresh_s` has passed."""
        share = self._share
        if self._fd is None or share.directory is None:
            return self._threads
        now = share.clock()
        if now - self._counted_at >= share.refresh_s:
            self._counted_at = now
            self._threads = share.threads_for(count_seats(share.directory, own=self._name))
        return self._threads

    def apply_to(self, ctx: Any) -> int:
        """Give a llama.cpp context this seat's thread count, when it changed; returns it."""
        threads = self.threads()
        # A seat that holds no file (a fixed share) leaves the context as it was made.
        if self._applied != threads and self.held:
            import llama_cpp

            llama_cpp.llama_set_n_threads(ctx, threads, threads)
            self._applied = threads
        return threads

    def close(self) -> None:
        if self._fd is None:
            return
        directory = self._share.directory
        assert directory is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / self._name)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Seat:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def count_seats(directory: Path, *, own: str = "") -> int:
    """Seats held in `directory` (`own` counted without a probe); removes the files of dead holders."""
    held = 1 if own else 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return held
    for name in names:
        if not name.endswith(_SUFFIX) or name == own:
            continue
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held += 1
        else:
            # Nobody holds it: its engine's process died while generating.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
    return held
