"""compose/compose.yaml against the Compose specification's rules that need no Docker engine.

The file is parsed and checked for structure: known top-level and service keys, references
that resolve (services, volumes, files, Dockerfiles), the front's port and /health
healthcheck, the profiles, and that every INFERENCE_* variable it sets is a setting and
its values (with their interpolation defaults) are accepted by Settings. Where a Docker
CLI with the compose plugin is installed, `docker compose config` checks it as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from presets.envfile import env_names
from presets.settings import Settings
from tests.support import ROOT

COMPOSE = ROOT / "compose" / "compose.yaml"
TOP_LEVEL = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models"}
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "depends_on",
    "healthcheck",
    "profiles",
    "deploy",
    "restart",
    "stop_grace_period",
    "stop_signal",
    "networks",
    "labels",
    "user",
    "working_dir",
    "container_name",
    "hostname",
    "logging",
    "ulimits",
}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def load() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def resolve(value: str) -> str:
    """A value with `${VAR:-default}` replaced by its default, as with nothing set."""
    return _INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def command(service: dict[str, Any]) -> list[str]:
    found = service["command"]
    return found if isinstance(found, list) else str(found).split()


def test_top_level_and_service_keys_are_the_specifications() -> None:
    compose = load()
    assert {k for k in compose if not k.startswith("x-")} <= TOP_LEVEL
    services = compose["services"]
    assert {"redis", "front", "worker", "fleet"} <= set(services)
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), (name, source)
            else:
                assert source in compose.get("volumes", {}), (name, source)
        build = service.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), (name, dockerfile)
            for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), re.MULTILINE):
                assert (context / copied).exists(), (dockerfile, copied)


def test_front_publishes_8085_and_its_healthcheck_asks_health() -> None:
    front = load()["services"]["front"]
    assert command(front)[-2:] == ["-m", "api"]
    assert any(str(port).endswith(":8085") for port in front["ports"])
    test = front["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert "127.0.0.1:8085/health'" in " ".join(test)


def test_workers_scale_and_the_fleet_and_cuda_are_profiles() -> None:
    services = load()["services"]
    worker = services["worker"]
    assert command(worker) == ["arq", "worker.Settings"] and "profiles" not in worker
    assert "INFERENCE_WORKER_MODEL" in worker["environment"]
    assert "container_name" not in worker, "a named container cannot be scaled"
    assert services["fleet"]["profiles"] == ["fleet"]
    assert command(services["fleet"])[-2:] == ["-m", "worker.fleet"]
    cuda = services["worker-cuda"]
    assert cuda["profiles"] == ["cuda"]
    assert cuda["build"]["dockerfile"] == "compose/Dockerfile.cuda"
    devices = cuda["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert "-DGGML_CUDA=on" in (ROOT / "compose" / "Dockerfile.cuda").read_text()


def test_every_inference_variable_it_sets_is_a_setting_it_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    known = set(env_names().values())
    for name, service in load()["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form"
        ours = {key: resolve(str(value)) for key, value in environment.items() if key.startswith("INFERENCE_")}
        assert set(ours) <= known, (name, set(ours) - known)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        Settings()  # raises when a value (or its default) is not valid
        for key in ours:
            monkeypatch.delenv(key)


def test_docker_compose_config_accepts_it_where_docker_is_installed(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose CLI here; the structural tests above stand in for it")
    checked = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_grafana_dashboard_queries_only_metrics_the_front_serves() -> None:
    from api.metrics import FleetCollector, Totals

    families = list(FleetCollector(totals=Totals(), queue={}, models=["m"], levels=3).collect())
    served = set()
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        served |= {family.name + suffix for suffix in suffixes}
    dashboard = json.loads((ROOT / "compose" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in expressions for name in re.findall(r"\binference_[a-z0-9_]+", expr)}
    assert queried, "the dashboard queries nothing"
    assert queried <= served, queried - served
    # Every metric the issue names has a panel.
    for metric in (
        "requests_total",
        "time_to_first_token",
        "time_per_output_token",
        "e2e_request_latency",
        "prompt_tokens_total",
        "generation_tokens_total",
        "queue_depth",
        "workers",
        "admitted_requests",
    ):
        assert any(metric in name for name in queried), metric
