"""When the fleet restarts a crashed worker, and when it gives up on a model.

Pure bookkeeping over timestamps the caller passes in, so the rules are testable without
processes: exponential backoff between restarts, and a give-up after `max_crashes` crashes
within `window_s`. A worker that ran healthily for a whole window clears its history, so a
model that crashes once a day is never given up on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    base_s: float
    cap_s: float
    max_crashes: int
    window_s: float

    def delay_s(self, crashes: int) -> float:
        """Backoff before the restart that follows the `crashes`-th crash in a row (1-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** max(crashes - 1, 0))


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """After a crash: restart after `delay_s`, or give up (`give_up`) and say why."""

    give_up: bool
    delay_s: float
    crashes: int


@dataclass(kw_only=True)
class CrashHistory:
    """One model's recent crashes, as seen by one supervisor."""

    policy: RestartPolicy
    _crashes_s: list[float] = field(default_factory=list)
    _started_s: float | None = None

    @property
    def crashes(self) -> int:
        return len(self._crashes_s)

    def started(self, *, now_s: float) -> None:
        self._started_s = now_s

    def reset(self) -> None:
        """An operator asked for the model again: start counting afresh."""
        self._crashes_s.clear()
        self._started_s = None

    def verdict(self, *, now_s: float) -> Verdict:
        """What a crash now would mean; changes nothing (see `record`)."""
        recent = self._recent(now_s=now_s)
        crashes = len(recent) + 1
        give_up = crashes >= self.policy.max_crashes
        return Verdict(give_up=give_up, delay_s=0.0 if give_up else self.policy.delay_s(crashes), crashes=crashes)

    def record(self, *, now_s: float) -> Verdict:
        """Count a crash now and return what to do about it."""
        verdict = self.verdict(now_s=now_s)
        self._crashes_s = [*self._recent(now_s=now_s), now_s]
        self._started_s = None
        return verdict

    def _recent(self, *, now_s: float) -> list[float]:
        ran_healthily = self._started_s is not None and now_s - self._started_s >= self.policy.window_s
        if ran_healthily:
            return []
        return [t for t in self._crashes_s if now_s - t < self.policy.window_s]
