"""Where one request's time goes on the path front -> Redis -> worker -> pub/sub -> SSE.

    .venv/bin/python -m bench.trace_path                      # null model, 30 requests
    .venv/bin/python -m bench.trace_path --backend llamacpp   # the real model

Redis MONITOR timestamps every command the front and the worker send, so the gaps
between a request's commands show, without touching either process, how long each
of them spent between two Redis calls. Client-side send / first chunk / end times go
on the same clock (wall time; one machine). MONITOR slows Redis a little: read the
shape, and compare totals with the unmonitored benchmark.
"""

from __future__ import annotations

import argparse
import itertools
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import ServiceConfig, clean_prefix, exit_on_sigterm, running, start_front, start_worker
from bench.prompts import chat_body, prompt
from bench.queue_overhead import NULL_PROMPT


@dataclass(frozen=True, kw_only=True)
class Command:
    at: float
    who: str
    text: str


def redis_ports(pids: dict[int, str]) -> dict[str, str]:
    """Local port of each connection to Redis -> the name of the process that owns it."""
    out = subprocess.run(["ss", "-tnpH", "dst", "127.0.0.1:6379"], capture_output=True, text=True).stdout
    ports = {}
    for line in out.splitlines():
        parts = line.split()
        local = parts[3].rsplit(":", 1)[1]
        for pid, name in pids.items():
            if f"pid={pid}," in line:
                ports[local] = name
    return ports


class Monitor:
    """Every command on the benchmark's Redis DB, as `redis-cli monitor` prints them.

    A separate process, not a thread here: parsing the monitor stream in this process
    would hold the GIL just when the client reads the answer it times.
    """

    _LINE = re.compile(r"^(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$")

    def __init__(self, redis_url: str, ports: dict[str, str], db: int, out: Path) -> None:
        self._ports = ports
        self._db = db
        self._out = out
        with out.open("wb") as handle:
            argv = ["redis-cli", "-u", redis_url.rsplit("/", 1)[0], "monitor"]
            self._process = subprocess.Popen(argv, stdout=handle)
        time.sleep(0.5)  # until it is subscribed to the command stream
        self.commands: list[Command] = []

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=5)
        for line in self._out.read_text(errors="replace").splitlines():
            match = self._LINE.match(line)
            if match is None or int(match.group(2)) != self._db:
                continue
            at, _, client, command = match.groups()
            port = client.rsplit(":", 1)[-1]
            who = self._ports.get(port, "lua" if client == "lua" else "?")
            self.commands.append(Command(at=float(at), who=who, text=_short(command.replace('"', ""))))


def _short(command: str) -> str:
    words = command.split()
    name = words[0].upper() if words else ""
    keys = [w.split(":")[1] if w.count(":") >= 2 else w for w in words[1:3]]
    return " ".join([name, *keys])[:60]


@dataclass(frozen=True, kw_only=True)
class Request:
    sent: float
    first: float
    end: float


def _send(http: httpx.Client, url: str, body: dict[str, object]) -> Request:
    sent = time.time()
    first = 0.0
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not first and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                first = time.time()
    return Request(sent=sent, first=first, end=time.time())


def timeline(request: Request, commands: list[Command]) -> list[tuple[float, str, str]]:
    window = [c for c in commands if request.sent - 0.001 <= c.at <= request.end + 0.005]
    events = [(0.0, "client", "request sent")]
    events += [((c.at - request.sent) * 1000, c.who, c.text) for c in window]
    events += [((request.first - request.sent) * 1000, "client", "first content chunk")]
    events += [((request.end - request.sent) * 1000, "client", "stream ended")]
    return sorted(events)


def median_timeline(requests: list[Request], commands: list[Command]) -> list[tuple[float, str]]:
    """Each step (the n-th time a process sent a command) at its median offset over all requests.

    One request's timeline is noisy; steps present in fewer than half the requests (an
    occasional heartbeat) are left out.
    """
    offsets: dict[str, list[float]] = defaultdict(list)
    for request in requests:
        seen: dict[str, int] = defaultdict(int)
        for at, who, text in timeline(request, commands):
            step = f"{who:7s} {' '.join(text.split()[:2])}"
            seen[step] += 1
            offsets[f"{step} #{seen[step]}"].append(at)
    steps = [(statistics.median(v), k) for k, v in offsets.items() if len(v) * 2 >= len(requests)]
    return sorted(steps)


def gaps_by_process(events: list[tuple[float, str, str]]) -> dict[str, float]:
    """Time before each command, charged to the process that sent it (what it did since the last one)."""
    charged: dict[str, float] = defaultdict(float)
    for (before, _, _), (at, who, _) in itertools.pairwise(events):
        charged[who] += at - before
    return dict(charged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("null", "llamacpp"), default="null")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from presets.settings import load_settings

    config = ServiceConfig(
        redis_url=args.redis_url,
        prefix=f"bench{secrets.token_hex(4)}",
        models_dir=load_settings().models_dir,
        threads=2,
        n_ctx=4096,
        log_dir=Path(tempfile.mkdtemp(prefix="bench-trace-")),
    )
    db = int(args.redis_url.rsplit("/", 1)[1])
    requests: list[Request] = []
    try:
        front, url = start_front(config)
        with running(front):
            worker = start_worker(config, args.model, front_url=url, INFERENCE_BACKEND=args.backend)
            with running(worker), httpx.Client(timeout=120) as http:

                def body(index: int) -> dict[str, object]:
                    content = NULL_PROMPT if args.backend == "null" else prompt(index)
                    return chat_body(args.model, content, max_tokens=args.max_tokens)

                for index in range(5):
                    _send(http, url, body(90 + index))
                ports = redis_ports({front.pid: "front", worker.pid: "worker"})
                monitor = Monitor(args.redis_url, ports, db, config.log_dir / "monitor.txt")
                for index in range(args.requests):
                    requests.append(_send(http, url, body(index)))
                    time.sleep(0.05)  # keeps each request's commands apart
                monitor.stop()
    finally:
        clean_prefix(args.redis_url, config.prefix)
    ttfts = [(r.first - r.sent) * 1000 for r in requests]
    median = sorted(requests, key=lambda r: r.first - r.sent)[len(requests) // 2]
    events = timeline(median, monitor.commands)
    print(f"TTFT over {len(requests)} requests: p50 {statistics.median(ttfts):.1f} ms; the median request:")
    previous = 0.0
    for at, who, text in events:
        print(f"  {at:8.2f} ms  (+{at - previous:6.2f})  {who:7s} {text}")
        previous = at
    print("every step at its median offset over all requests:")
    previous = 0.0
    for at, step in median_timeline(requests, monitor.commands):
        print(f"  {at:8.2f} ms  (+{at - previous:6.2f})  {step}")
        previous = at
    totals: dict[str, list[float]] = defaultdict(list)
    for request in requests:
        for who, ms in gaps_by_process(timeline(request, monitor.commands)).items():
            totals[who].append(ms)
    print("time before each process's commands, summed per request (median over requests):")
    for who, values in sorted(totals.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {who:7s} {statistics.median(values):7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
