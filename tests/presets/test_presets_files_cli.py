"""Checksums, downloads and the ``python -m presets`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from presets.__main__ import main
from presets.files import (
    CACHE_FILE_NAME,
    DownloadUnavailable,
    FileStatus,
    cached_sha256,
    download_model,
    sha256_file,
    verify_model,
)
from presets.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _rows(output: str) -> dict[str, list[str]]:
    """model id -> statuses, from the verify table (header line skipped)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines()[1:]:
        model_id, rest = line.split(None, 1)
        status = "NO CHECKSUM" if rest.startswith("NO CHECKSUM") else rest.split()[0]
        rows.setdefault(model_id, []).append(status)
    return rows


def test_verify_the_two_embedded_models(embedded_models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "smollm2-135m", "gemma3-270m", "--models-dir", str(embedded_models_dir), "--no-cache"])
    output = capsys.readouterr().out
    assert code == 0
    assert _rows(output) == {"smollm2-135m": ["OK"], "gemma3-270m": ["OK"]}
    assert SMOLLM2_SHA in output and GEMMA3_SHA in output


def test_verify_reports_missing_mismatch_and_no_checksum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "llama-3.2-3b" / "llama-3.2-3b-instruct-q4_k_m.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"truncated download")
    unchecked = tmp_path / "deepseek-r1-7b" / "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"
    unchecked.parent.mkdir()
    unchecked.write_bytes(b"whatever")
    code = main(["verify", "llama-3.2-3b", "deepseek-r1-7b", "phi-4", "qwen2.5-7b", "--models-dir", str(tmp_path)])
    rows = _rows(capsys.readouterr().out)
    assert code == 1
    assert rows == {
        "llama-3.2-3b": ["MISMATCH"],
        "deepseek-r1-7b": ["NO CHECKSUM"],
        "phi-4": ["MISSING"],
        "qwen2.5-7b": ["MISSING", "MISSING"],
    }


def test_verify_without_mismatch_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "phi-4", "--models-dir", str(tmp_path)]) == 0
    assert "MISSING" in capsys.readouterr().out


def test_checksum_cache_is_keyed_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"first")
    cache = tmp_path / CACHE_FILE_NAME
    assert cached_sha256(path, cache_path=cache) == sha256_file(path)
    entry = json.loads(cache.read_text())[str(path.resolve())]
    # A planted value proves the cache is read while size and mtime match...
    entry["sha256"] = "f" * 64
    cache.write_text(json.dumps({str(path.resolve()): entry}))
    assert cached_sha256(path, cache_path=cache) == "f" * 64
    # ...and ignored once the file changes, even at the same size.
    path.write_bytes(b"other")
    os.utime(path, ns=(entry["mtime_ns"] + 10**9, entry["mtime_ns"] + 10**9))
    assert cached_sha256(path, cache_path=cache) == sha256_file(path) != "f" * 64


def test_unreadable_cache_falls_back_to_hashing(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"data")
    cache = tmp_path / CACHE_FILE_NAME
    cache.write_text("{not json")
    assert cached_sha256(path, cache_path=cache) == sha256_file(path)


def test_verify_model_uses_the_cache_in_models_dir(embedded_registry: Registry) -> None:
    checks = verify_model(embedded_registry, "gemma3-270m")
    assert [(c.status, c.detail) for c in checks] == [(FileStatus.OK, GEMMA3_SHA)]
    cache = json.loads((embedded_registry.models_dir / CACHE_FILE_NAME).read_text())
    assert cache[str(checks[0].path.resolve())]["sha256"] == GEMMA3_SHA


def test_download_embedded_assembles_into_models_dir(embedded_registry: Registry) -> None:
    paths = download_model(embedded_registry, "gemma3-270m")
    assert paths == [embedded_registry.models_dir / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"]


def test_download_without_huggingface_hub_gives_the_command(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: nothing is fetched
    with pytest.raises(DownloadUnavailable) as caught:
        download_model(registry, "qwen2.5-7b")
    assert str(caught.value) == (
        "huggingface-cli download Qwen/Qwen2.5-7B-Instruct-GGUF "
        "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf "
        f"--local-dir {registry.models_dir / 'qwen2.5-7b'}"
    )
    assert main(["download", "llama-3.2-3b", "--models-dir", str(registry.models_dir)]) == 1
    assert "huggingface-cli download hugging-quants/Llama-3.2-3B-Instruct-Q4_K_M-GGUF" in capsys.readouterr().err


def test_list_shows_every_model_and_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first_words = {line.split()[0] for line in lines if line.strip()}
    assert {"phi-4", "smollm2-135m", "gemma3-270m"} <= first_words
    presets = {w for w in first_words if w[:1] in "SDTQPE" and w[1:].isdigit()}
    assert len(presets) == 38


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "presets", *args],
        cwd=REPO_ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_passes_for_the_default_config(tmp_path: Path) -> None:
    result = _run_cli("check", env={"INFERENCE_MODELS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK config=E1 mode=single models=smollm2-135m,gemma3-270m steps=-"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"INFERENCE_CONFIG": "Z9"}, "error: unknown preset 'Z9'"),
        ({"INFERENCE_CONFIG": "S1"}, "error: config 'S1': model 'phi-4' file missing"),
        ({"INFERENCE_CONFIG": "S1", "INFERENCE_ORCHESTRATION_MODE": "debate"}, "needs at least 2 models"),
        ({"INFERENCE_MODEL_ROLES": "{broken"}, "error: INFERENCE_MODEL_ROLES: "),
        ({"INFERENCE_MODEL_ROLES": '{"phi-4": ["wizard"]}'}, "unknown role 'wizard'"),
    ],
)
def test_check_prints_one_line_and_exits_2(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = _run_cli("check", env={"INFERENCE_MODELS_DIR": str(tmp_path), **env})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr
