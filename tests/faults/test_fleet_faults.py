"""The fleet supervisor under faults: real supervisor, worker and front processes, the real Redis.

A model file that cannot load, a worker that keeps crashing (killed by the test each time
it comes up), an unload sent while a worker loads, the memory budget per host at start-up,
and two supervisors receiving the same load request.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import StartFront
from tests.support import ROOT, Proc, spawn
from worker.fleet_protocol import FleetCommand, encode_command

pytestmark = [pytest.mark.redis, pytest.mark.model]
SMOL, GEMMA, BROKEN = "smollm2-135m", "gemma3-270m", "deepseek-r1-7b"
BROKEN_FILE = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"
HOST = socket.gethostname()

StartFleet = Callable[..., Proc]


@pytest.fixture
def start_fleet(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartFleet]:
    procs: list[Proc] = []

    def start(**env: str) -> Proc:
        fleet_env = {**service_env, "INFERENCE_LOG_LEVEL": "INFO", **env}
        proc = spawn(["-m", "worker.fleet"], env=fleet_env, log=tmp_path / f"fleet-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def broken_models_dir(tmp_path: Path) -> Path:
    """A models dir whose deepseek-r1-7b file is garbage (the registry records no size or checksum)."""
    models = tmp_path / "broken-models"
    (models / BROKEN).mkdir(parents=True)
    (models / BROKEN / BROKEN_FILE).write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
    return models


def is_load_failure(line: str, models_dir: Path) -> bool:
    """The worker's one line for the broken file (the engine's own words in between)."""
    prefix = f"worker: model {BROKEN} failed to load: "
    return line.startswith(prefix) and line.endswith(str(models_dir / BROKEN / BROKEN_FILE))


def poll(check: Callable[[], object], *, what: str, timeout_s: float = 90, proc: Proc | None = None) -> object:
    """Wait (bounded) until check() returns something truthy, and return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}\n{proc.output() if proc else ''}")


def cards(url: str) -> dict[str, dict[str, object]]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}


def workers_of(client: redis.Redis, prefix: str, model: str) -> list[dict[bytes, bytes]]:
    return [client.hgetall(key) for key in client.scan_iter(match=f"{prefix}:worker:{model}:*")]


def test_a_model_file_that_cannot_load_is_one_line_and_exit_2(
    service_env: dict[str, str], broken_models_dir: Path, redis_client: redis.Redis, prefix: str
) -> None:
    env = {**os.environ, **service_env, "INFERENCE_MODELS_DIR": str(broken_models_dir)}
    env["INFERENCE_WORKER_MODEL"] = BROKEN
    done = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout == ""
    # llama.cpp may print its own diagnostics first; ours is one line, last, with no traceback.
    lines = done.stderr.splitlines()
    assert is_load_failure(lines[-1], broken_models_dir), lines[-1]
    assert [line for line in lines if line.startswith("worker:")] == lines[-1:]
    assert "Traceback" not in done.stderr
    # It registered while loading and left no trace.
    assert not list(redis_client.scan_iter(match=f"{prefix}:*"))


def test_a_worker_that_cannot_set_up_is_unavailable_at_once_with_its_reason(
    start_fleet: StartFleet, start_front: StartFront, broken_models_dir: Path
) -> None:
    env = {"INFERENCE_MODELS_DIR": str(broken_models_dir), "INFERENCE_PRELOAD_MODELS": BROKEN}
    url = start_front(**env)
    fleet = start_fleet(**env, INFERENCE_MEMORY_BUDGET_MB="100000")
    card = poll(lambda: cards(url)[BROKEN].get("reason") and cards(url)[BROKEN], what="never unavailable", proc=fleet)
    assert isinstance(card, dict) and card["status"] == "unavailable"
    assert is_load_failure(str(card["reason"]), broken_models_dir), card["reason"]
    # Exit status 2 is not retried: one start, no restart.
    assert fleet.output().count(f"started worker for {BROKEN}") == 1
    assert "restart" not in fleet.output()

    ready = httpx.get(f"{url}/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["progress"] == "0/1"
    assert body["unavailable"] == {BROKEN: card["reason"]}
    assert body["reason"] == f"No model is loaded; {BROKEN} is unavailable: {card['reason']}"

    # An explicit load tries once more and answers with the new failure, not a timeout.
    again = httpx.post(f"{url}/v1/models/{BROKEN}/load", timeout=60)
    assert again.status_code == 503, again.text
    assert again.json()["error"]["message"] == f"The model `{BROKEN}` could not be loaded: {card['reason']}"
    assert fleet.output().count(f"started worker for {BROKEN}") == 2
    chat = httpx.post(
        f"{url}/v1/chat/completions", json={"model": BROKEN, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert chat.status_code == 503 and card["reason"] in chat.json()["error"]["message"]


def test_a_crash_looping_worker_backs_off_then_the_model_is_given_up(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    env = {"INFERENCE_PRELOAD_MODELS": SMOL}
    url = start_front(**env)
    fleet = start_fleet(
        **env,
        INFERENCE_WORKER_MAX_CRASHES="3",
        INFERENCE_WORKER_CRASH_WINDOW_S="120",
        INFERENCE_WORKER_RESTART_BASE_S="0.2",
        INFERENCE_WORKER_RESTART_CAP_S="0.3",
    )
    killed: set[int] = set()

    def kill_new_workers() -> bool:
        for fields in workers_of(redis_client, prefix, SMOL):
            pid = int(fields[b"pid"])
            if fields.get(b"host") == HOST.encode() and pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        return bool(cards(url)[SMOL].get("reason"))

    poll(kill_new_workers, what="the model was never given up", timeout_s=120, proc=fleet)
    assert len(killed) == 3
    card = cards(url)[SMOL]
    assert card["status"] == "unavailable"
    # Then the worker's last stderr line, whatever it was doing when killed.
    assert str(card["reason"]).startswith("the worker crashed 3 times within 120s (killed by SIGKILL)")
    log = fleet.output()
    # Exponential backoff, capped: 0.2 s, then 0.4 s capped to 0.3 s.
    assert f"worker for {SMOL} killed by SIGKILL; restart 1 in 0.2s" in log
    assert f"worker for {SMOL} killed by SIGKILL; restart 2 in 0.3s" in log
    assert log.count(f"started worker for {SMOL}") == 3
    assert redis_client.hget(f"{prefix}:unavail:{SMOL}", "host") == HOST.encode()
    assert not redis_client.exists(f"{prefix}:loading:{SMOL}")
    body = httpx.get(f"{url}/health/ready").json()
    assert body["unavailable"] == {SMOL: card["reason"]}

    # Asked for again, it starts afresh and the reason goes once it serves.
    loaded = httpx.post(f"{url}/v1/models/{SMOL}/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert cards(url)[SMOL]["status"] == "loaded" and "reason" not in cards(url)[SMOL]
    poll(lambda: not redis_client.exists(f"{prefix}:unavail:{SMOL}"), what="reason never cleared", proc=fleet)


def test_unload_reaches_a_worker_that_is_still_loading(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    # A fresh models dir makes the worker assemble Gemma's file first, and four copies of
    # the model take a while more: the worker is still loading when the unload comes.
    env = {
        "INFERENCE_PRELOAD_MODELS": SMOL,
        "INFERENCE_MODELS_DIR": str(tmp_path / "fresh-models"),
        "INFERENCE_MAX_CONCURRENT_PER_MODEL": "4",
    }
    url = start_front(**env)
    fleet = start_fleet(**env)
    poll(lambda: cards(url)[SMOL]["status"] == "loaded", what="smollm2 never loaded", proc=fleet)
    redis_client.publish(f"{prefix}:fleet", encode_command(FleetCommand(action="load", model=GEMMA, request_id="r1")))
    poll(lambda: cards(url)[GEMMA]["status"] == "loading", what="gemma never loading", proc=fleet)
    unloaded = httpx.post(f"{url}/v1/models/{GEMMA}/unload", timeout=60)
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    poll(lambda: f"worker for {GEMMA} stopped" in fleet.output(), what="the worker never exited", proc=fleet)
    log = fleet.output()
    assert f"unloading {GEMMA} while it loads" in log
    assert f"serving {GEMMA}" not in log
    assert cards(url)[GEMMA]["status"] == "available"
    assert not workers_of(redis_client, prefix, GEMMA)
    assert not redis_client.exists(f"{prefix}:loading:{GEMMA}")


def fake_remote_worker(client: redis.Redis, prefix: str, *, model: str, host: str) -> None:
    """The registry entry a worker on another machine would write (see worker.presence)."""
    expires_ms = int(time.time() * 1000) + 600_000
    client.hset(
        f"{prefix}:worker:{model}:remote-1",
        mapping={"model": model, "worker_id": "remote-1", "host": host, "pid": 1, "state": "ready"},
    )
    client.zadd(f"{prefix}:workers", {f"{model}/remote-1": expires_ms})


def test_the_memory_budget_is_per_host_and_applies_at_start_up(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    # smollm2 takes 253 MB and gemma 390 MB at n_ctx 4096; phi-4 on another host does not count.
    fake_remote_worker(redis_client, prefix, model="phi-4", host="elsewhere")
    # At their own windows (8K, 32K) each would take most of this budget: fix the window.
    env = {
        "INFERENCE_PRELOAD_MODELS": f"{SMOL},{GEMMA}",
        "INFERENCE_MEMORY_BUDGET_MB": "700",
        "INFERENCE_N_CTX": "4096",
    }
    url = start_front(**env)
    fleet = start_fleet(**env)
    both = {SMOL: "loaded", GEMMA: "loaded"}
    poll(lambda: {m: c["status"] for m, c in cards(url).items() if m in both} == both, what="not both", proc=fleet)
    assert f"{GEMMA} is unavailable" not in fleet.output()
    fleet.stop()
    gone = lambda: not workers_of(redis_client, prefix, SMOL) and not workers_of(redis_client, prefix, GEMMA)  # noqa: E731
    poll(gone, what="workers never left", proc=fleet)

    tight = start_fleet(**{**env, "INFERENCE_MEMORY_BUDGET_MB": "400"})
    card = poll(lambda: cards(url)[GEMMA].get("reason") and cards(url)[GEMMA], what="never refused", proc=tight)
    assert isinstance(card, dict) and card["status"] == "unavailable"
    assert card["reason"] == f"needs 390 MB but 253 of the 400 MB budget of host {HOST} is in use"
    poll(lambda: cards(url)[SMOL]["status"] == "loaded", what="smollm2 never loaded", proc=tight)
    assert f"started worker for {GEMMA}" not in tight.output()


def test_exactly_one_of_two_supervisors_carries_out_a_load(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    env = {"INFERENCE_PRELOAD_MODELS": SMOL}
    url = start_front(**env)
    fleets = [start_fleet(**env), start_fleet(**env)]
    poll(lambda: len(workers_of(redis_client, prefix, SMOL)) == 2 and cards(url)[SMOL]["workers"] == 2, what="no")
    loaded = httpx.post(f"{url}/v1/models/{GEMMA}/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    poll(
        lambda: any(f"load of {GEMMA} claimed by another supervisor" in f.output() for f in fleets),
        what="the second supervisor never saw the request",
    )
    assert sum(f.output().count(f"started worker for {GEMMA}") for f in fleets) == 1
    assert len(workers_of(redis_client, prefix, GEMMA)) == 1


def test_a_gpu_budget_applies_to_the_models_placed_on_that_gpu(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    # Both models placed on GPU 0 (on this CPU-only machine the placement only sets the
    # worker's CUDA_VISIBLE_DEVICES); the host has room for both, GPU 0 for one.
    env = {
        "INFERENCE_PRELOAD_MODELS": f"{SMOL},{GEMMA}",
        "INFERENCE_MEMORY_BUDGET_MB": "10000",
        "INFERENCE_N_CTX": "4096",
        "INFERENCE_MODEL_PLACEMENT": json.dumps({SMOL: {"gpu": 0}, GEMMA: {"gpu": 0}}),
        "INFERENCE_GPU_MEMORY_BUDGET_MB": json.dumps({"0": 400}),
    }
    url = start_front(**env)
    fleet = start_fleet(**env)
    card = poll(lambda: cards(url)[GEMMA].get("reason") and cards(url)[GEMMA], what="never refused", proc=fleet)
    assert isinstance(card, dict) and card["status"] == "unavailable"
    assert card["reason"] == f"needs 390 MB but 253 of the 400 MB budget of GPU 0 on host {HOST} is in use"
    poll(lambda: cards(url)[SMOL]["status"] == "loaded", what="smollm2 never loaded", proc=fleet)
