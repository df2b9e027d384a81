"""A small pure-python reader for the GGUF header (metadata key/value pairs only).

Only what the registry needs: the training context length of a model file, read without
llama-cpp-python so that validation and the CLI work before the native build exists.
Layout (GGUF v2 and v3, little-endian): magic ``GGUF``, uint32 version, uint64 tensor
count, uint64 kv count, then kv pairs of (string key, uint32 type, value).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"

# Value type ids from the GGUF spec.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)

_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}

# Metadata strings are short; a huge length means a corrupt or non-GGUF file, and
# reading it would allocate gigabytes.
_MAX_STRING_BYTES = 64 * 1024 * 1024

GGUFScalar = int | float | bool | str


class GGUFError(ValueError):
    """The file is not a readable GGUF v2/v3 file."""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return data


def _read_struct(stream: BinaryIO, fmt: str) -> int | float | bool:
    value: int | float | bool = struct.unpack(fmt, _read_exact(stream, struct.calcsize(fmt)))[0]
    return value


def _read_uint(stream: BinaryIO, fmt: str) -> int:
    value = _read_struct(stream, fmt)
    assert isinstance(value, int)
    return value


def _read_string(stream: BinaryIO) -> str:
    length = _read_uint(stream, "<Q")
    if length > _MAX_STRING_BYTES:
        raise GGUFError(f"implausible GGUF string length {length}")
    return _read_exact(stream, length).decode("utf-8", errors="replace")


def _skip_string(stream: BinaryIO) -> None:
    length = _read_uint(stream, "<Q")
    if length > _MAX_STRING_BYTES:
        raise GGUFError(f"implausible GGUF string length {length}")
    stream.seek(length, 1)


def _read_value(stream: BinaryIO, value_type: int) -> GGUFScalar | None:
    """Read one value; arrays are skipped (returned as None) since no caller needs them."""
    if value_type == _STRING:
        return _read_string(stream)
    if value_type == _ARRAY:
        _skip_array(stream)
        return None
    fmt = _SCALAR_FORMATS.get(value_type)
    if fmt is None:
        raise GGUFError(f"unknown GGUF value type {value_type}")
    return _read_struct(stream, fmt)


def _skip_array(stream: BinaryIO) -> None:
    elem_type = _read_uint(stream, "<I")
    count = _read_uint(stream, "<Q")
    if elem_type == _STRING:
        for _ in range(count):
            _skip_string(stream)
    elif elem_type == _ARRAY:
        for _ in range(count):
            _skip_array(stream)
    else:
        fmt = _SCALAR_FORMATS.get(elem_type)
        if fmt is None:
            raise GGUFError(f"unknown GGUF array element type {elem_type}")
        stream.seek(struct.calcsize(fmt) * count, 1)


def read_metadata(path: Path) -> dict[str, GGUFScalar]:
    """Return the scalar and string metadata of a GGUF file; array values are left out."""
    with path.open("rb") as stream:
        if _read_exact(stream, 4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version = _read_uint(stream, "<I")
        if version < 2:
            # v1 used 32-bit lengths; no model this service ships is that old.
            raise GGUFError(f"{path}: GGUF version {version} is not supported")
        _read_uint(stream, "<Q")  # tensor count
        kv_count = _read_uint(stream, "<Q")
        metadata: dict[str, GGUFScalar] = {}
        for _ in range(kv_count):
            key = _read_string(stream)
            value_type = _read_uint(stream, "<I")
            value = _read_value(stream, value_type)
            if value is not None:
                metadata[key] = value
        return metadata


def read_context_length(path: Path) -> int | None:
    """The ``<arch>.context_length`` a model was trained with, or None if the file lacks it."""
    metadata = read_metadata(path)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None
    value = metadata.get(f"{arch}.context_length")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
