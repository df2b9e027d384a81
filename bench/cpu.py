"""CPU accounting from /proc: who used the 2 cores during a phase, and waiting for them to be free.

On a 2-core machine any other busy process skews every number, so each phase records
how much CPU processes outside the benchmark used ("foreign"), and a run waits for the
machine to be quiet before each system it measures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def system_busy_s() -> tuple[float, float]:
    """CPU seconds all cores spent working since boot, and seconds the hypervisor stole from them."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user, nice, system, irq, softirq; idle and iowait are not work, steal is another VM's.
    return (values[0] + values[1] + values[2] + values[5] + values[6]) / _TICK, values[7] / _TICK


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass(frozen=True, kw_only=True)
class CpuUse:
    wall_s: float
    # Cores busy on average: 1.0 is one core for the whole phase.
    cores: Mapping[str, float]
    foreign: float
    # CPU the hypervisor gave other VMs while this one wanted it.
    steal: float = 0.0

    def text(self) -> str:
        parts = [f"{name} {value:.2f}" for name, value in self.cores.items()]
        return ", ".join(parts) + f", other processes {self.foreign:.2f}, stolen by the host {self.steal:.2f}"


class CpuMeter:
    """CPU of named processes (this one as "client", Redis as "redis") over one phase."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        # Every Redis server counts as Redis: the shared one and a benchmark's own.
        self._groups = {"client": [os.getpid()], **{name: [pid] for name, pid in pids.items()}}
        self._groups["redis"] = pids_named("redis-server")
        self._start = time.monotonic()
        self._system, self._steal = system_busy_s()
        self._used = self._cpu_s()

    def _cpu_s(self) -> dict[str, float]:
        return {name: sum(process_cpu_s(pid) for pid in group) for name, group in self._groups.items()}

    def stop(self) -> CpuUse:
        wall = max(time.monotonic() - self._start, 1e-9)
        used = {name: spent - self._used[name] for name, spent in self._cpu_s().items()}
        busy, steal = system_busy_s()
        return CpuUse(
            wall_s=wall,
            cores={name: value / wall for name, value in used.items()},
            foreign=max(busy - self._system - sum(used.values()), 0.0) / wall,
            steal=(steal - self._steal) / wall,
        )


def wait_for_quiet(
    *, threshold: float = 0.25, sample_s: float = 2.0, max_wait_s: float = 900, log: Callable[[str], None] = print
) -> float:
    """Wait until the machine's other processes use under `threshold` cores; return the last reading."""
    deadline = time.monotonic() + max_wait_s
    warned = False
    while True:
        meter = CpuMeter({})
        time.sleep(sample_s)
        use = meter.stop()
        busy = use.foreign + sum(v for k, v in use.cores.items() if k != "client")
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                log(f"  machine still busy ({busy:.2f} cores used by others); measuring anyway")
            return busy
        if not warned:
            log(f"  waiting for a quiet machine ({busy:.2f} cores used by other processes) ...")
            warned = True


def combined(uses: list[CpuUse]) -> CpuUse:
    """Many short phases as one: each process's cores averaged over their total wall time."""
    wall = sum(use.wall_s for use in uses) or 1e-9
    names = {name for use in uses for name in use.cores}
    return CpuUse(
        wall_s=wall,
        cores={name: sum(use.cores.get(name, 0.0) * use.wall_s for use in uses) / wall for name in sorted(names)},
        foreign=sum(use.foreign * use.wall_s for use in uses) / wall,
        steal=sum(use.steal * use.wall_s for use in uses) / wall,
    )


# Other processes using more than this many cores during a phase skew its numbers.
SKEW_LIMIT = 0.15


def skewed(use: CpuUse) -> bool:
    return use.foreign > SKEW_LIMIT


async def unskewed(
    measure: Callable[[int], Awaitable[T]],
    *,
    pids: Mapping[str, int],
    what: str,
    log: Callable[[str], None] = print,
    tries: int = 3,
) -> tuple[T, CpuUse]:
    """Run a phase, and run it again after a quiet spell while other processes skewed it.

    Another job on this shared 2-core machine can start at any moment; a phase it
    overlapped is thrown away rather than reported (after `tries`, the last one is kept).
    `measure` gets the attempt number, from 1, to prepare a redo.
    """
    for attempt in range(1, tries + 1):
        meter = CpuMeter(pids)
        result = await measure(attempt)
        use = meter.stop()
        if not skewed(use) or attempt == tries:
            return result, use
        log(f"  {what}: other processes used {use.foreign:.2f} cores; redoing it when the machine is quiet")
        wait_for_quiet(log=log)
    raise AssertionError("unreachable")
