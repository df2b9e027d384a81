"""Where the front's and the worker's CPU goes under a benchmark's load: py-spy on both, summarised.

    .venv/bin/python -m bench.profile --backend null --rate 200 --seconds 10
    .venv/bin/python -m bench.profile --backend llamacpp --requests 30

Starts a front and one worker (own Redis prefix), samples both with `py-spy record`
while it drives the load, then prints per-thread CPU and the functions with the most
inclusive and self samples. Sampling slows the processes a little: read the shares,
not the latencies, of a profiled run.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.metrics import summarize
from bench.procs import Service, ServiceConfig, clean_prefix, exit_on_sigterm, running, start_front, start_worker
from bench.prompts import SEQUENTIAL, chat_body, prompt
from bench.queue_overhead import NULL_PROMPT

SAMPLE_RATE = 250


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    stacks: Counter[tuple[str, ...]]
    seconds: float

    @classmethod
    def parse(cls, name: str, raw: str, *, seconds: float) -> Profile:
        stacks: Counter[tuple[str, ...]] = Counter()
        for line in raw.splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks[tuple(frames.split(";"))] += int(count)
        return cls(name=name, stacks=stacks, seconds=seconds)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def cores(self, samples: int) -> float:
        """Samples as busy cores: 1.0 is one core busy the whole time."""
        return samples / (SAMPLE_RATE * self.seconds)

    def by_thread(self) -> Counter[str]:
        return Counter({stack[0]: 0 for stack in self.stacks}) + _sum((s[0], n) for s, n in self.stacks.items())

    def inclusive(self) -> Counter[str]:
        # Thread names lead each stack with -t; a frame counts once per stack, however deep it recurs.
        return _sum((frame, n) for stack, n in self.stacks.items() for frame in set(stack[1:]))

    def own(self) -> Counter[str]:
        return _sum((stack[-1], n) for stack, n in self.stacks.items())

    def report(self, top: int = 25) -> str:
        total = self.samples or 1
        lines = [f"== {self.name}: {self.cores(self.samples):.2f} cores busy over {self.seconds:.1f}s"]
        for thread, n in self.by_thread().most_common():
            lines.append(f"   thread {thread}: {self.cores(n):.2f} cores")
        for title, counts in (("inclusive", self.inclusive()), ("self", self.own())):
            lines.append(f"-- top {top} by {title} samples (% of this process's busy samples)")
            for frame, n in counts.most_common(top):
                lines.append(f"  {100 * n / total:5.1f}%  {frame}")
        return "\n".join(lines)


def _sum(pairs: Iterable[tuple[str, int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for key, n in pairs:
        counts[key] += n
    return counts


def _spy(service: Service, out: Path) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--pid", str(service.pid), "--format", "raw", "--nolineno", "--threads",
            "--nonblocking", "--rate", str(SAMPLE_RATE), "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _load(url: str, args: argparse.Namespace) -> list[Any]:
    async with loadgen.client() as http:
        if args.backend == "null":

            def body(_: int) -> dict[str, Any]:
                return chat_body(args.model, NULL_PROMPT, max_tokens=16)

        else:

            def body(index: int) -> dict[str, Any]:
                return chat_body(args.model, prompt(SEQUENTIAL + index), max_tokens=args.max_tokens)

        send = loadgen.http_sender(http, url + "/v1/chat/completions", body)
        await loadgen.fixed_concurrency(send, requests=3, concurrency=1)
        if args.rate:
            run = await loadgen.poisson(send, rate=args.rate, requests=int(args.rate * args.seconds))
        else:
            run = await loadgen.fixed_concurrency(send, requests=args.requests, concurrency=args.concurrency)
        return run.records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("null", "llamacpp"), default="null")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second (default: fixed concurrency)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from presets.settings import load_settings

    out_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    config = ServiceConfig(
        redis_url=args.redis_url,
        prefix=f"bench{secrets.token_hex(4)}",
        models_dir=load_settings().models_dir,
        threads=2,
        n_ctx=4096,
        log_dir=out_dir,
    )
    try:
        front, url = start_front(config)
        with running(front):
            worker = start_worker(config, args.model, front_url=url, INFERENCE_BACKEND=args.backend)
            with running(worker):
                spies = {name: (_spy(s, out_dir / f"{name}.txt"), out_dir / f"{name}.txt")
                         for name, s in (("front", front), ("worker", worker))}  # fmt: skip
                time.sleep(1.0)  # py-spy attaches
                started = time.monotonic()
                records = asyncio.run(_load(url, args))
                seconds = time.monotonic() - started
                for spy, _ in spies.values():
                    spy.send_signal(signal.SIGINT)
                for spy, _ in spies.values():
                    spy.wait(timeout=30)
    finally:
        clean_prefix(args.redis_url, config.prefix)
    s = summarize(records)
    print(
        f"load: {s.ok} ok, {s.failed} failed, {s.requests_per_s:.1f} req/s, TTFT p50/p95 {s.ttft.text()} ms, "
        f"TPOT p50/p95 {s.tpot.text()} ms, latency p50/p95 {s.latency.text()} ms (profiled: slower than unprofiled)"
    )
    for name, (_, path) in spies.items():
        # The load's seconds, not the spy's: the few idle seconds around it have no samples.
        print(Profile.parse(name, path.read_text(), seconds=seconds).report(args.top))
    print(f"raw stacks in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
