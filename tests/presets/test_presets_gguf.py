"""The GGUF header reader, on the real SmolLM2 file and on hand-built headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from presets.embedded import resolve_embedded
from presets.gguf import GGUFError, read_context_length, read_metadata


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, value_type: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", value_type) + payload


def _header(kvs: list[bytes], *, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)) + b"".join(kvs)


def test_reads_the_real_smollm2_header(tmp_path: Path) -> None:
    path = resolve_embedded("smollm2-135m", models_dir=tmp_path)
    metadata = read_metadata(path)
    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.context_length"] == 8192
    assert metadata["llama.block_count"] == 30
    assert "tokenizer.ggml.tokens" not in metadata  # arrays are skipped, not returned
    assert read_context_length(path) == 8192


def test_reads_every_value_type_and_skips_arrays(tmp_path: Path) -> None:
    kvs = [
        _kv("general.architecture", 8, _string("toy")),
        _kv("toy.tokens", 9, struct.pack("<IQ", 8, 2) + _string("a") + _string("bc")),
        _kv("toy.nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 2) + struct.pack("<II", 1, 2)),
        _kv("toy.u8", 0, struct.pack("<B", 7)),
        _kv("toy.i16", 3, struct.pack("<h", -3)),
        _kv("toy.f32", 6, struct.pack("<f", 0.5)),
        _kv("toy.flag", 7, struct.pack("<?", True)),
        _kv("toy.u64", 10, struct.pack("<Q", 2**40)),
        _kv("toy.f64", 12, struct.pack("<d", 1.25)),
        _kv("toy.context_length", 4, struct.pack("<I", 4096)),
    ]
    path = tmp_path / "toy.gguf"
    path.write_bytes(_header(kvs))
    metadata = read_metadata(path)
    assert metadata == {
        "general.architecture": "toy",
        "toy.u8": 7,
        "toy.i16": -3,
        "toy.f32": 0.5,
        "toy.flag": True,
        "toy.u64": 2**40,
        "toy.f64": 1.25,
        "toy.context_length": 4096,
    }
    assert read_context_length(path) == 4096


def test_missing_context_length_is_none(tmp_path: Path) -> None:
    path = tmp_path / "noctx.gguf"
    path.write_bytes(_header([_kv("general.architecture", 8, _string("toy"))]))
    assert read_context_length(path) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GGML" + bytes(20), "not a GGUF file"),
        (_header([], version=1), "version 1"),
        (_header([_kv("general.architecture", 8, _string("toy"))])[:-2], "truncated"),
        (_header([_kv("x", 13, b"")]), "unknown GGUF value type 13"),
    ],
)
def test_bad_files_raise_gguf_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        read_metadata(path)
