"""One benchmark run's knobs; the defaults keep a full run near 10 minutes on 2 cores."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.procs import ServiceConfig


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    prefix: str
    models_dir: Path
    log_dir: Path
    redis_url: str = "redis://127.0.0.1:6379/12"
    model: str = "smollm2-135m"
    threads: int = 2
    n_ctx: int = 4096
    max_tokens: int = 64
    sequential: int = 30
    concurrency: int = 4
    concurrent_requests: int = 32
    poisson_requests: int = 16
    # None: 60% of what the in-process floor serves one request at a time, so the queue
    # is sometimes busy but not saturated.
    poisson_rate: float | None = None
    # Also run the service with 4 engines in its one worker (INFERENCE_MAX_CONCURRENT_PER_MODEL=4).
    four_engines: bool = True
    null_sequential: int = 200
    null_rates: tuple[float, ...] = (50.0, 200.0)
    null_seconds: float = 10.0
    null_max_tokens: int = 16
    debate_models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    debate_repeats: int = 3
    seed: int = 0
    sections: frozenset[str] = field(default_factory=lambda: frozenset({"llm", "batching", "queue", "orchestration"}))

    def service(self) -> ServiceConfig:
        return ServiceConfig(
            redis_url=self.redis_url,
            prefix=self.prefix,
            models_dir=self.models_dir,
            threads=self.threads,
            n_ctx=self.n_ctx,
            log_dir=self.log_dir,
        )

    def quick(self) -> BenchConfig:
        """A smoke run of every code path in about two minutes; its numbers are not for reading."""
        return replace(
            self,
            max_tokens=16,
            sequential=4,
            concurrent_requests=8,
            poisson_requests=4,
            four_engines=False,
            null_sequential=20,
            null_seconds=2.0,
            debate_repeats=1,
        )
