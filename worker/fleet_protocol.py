"""Commands a front sends to fleet supervisors and workers over pub/sub."""

from __future__ import annotations

from typing import Literal

import msgspec


class FleetCommand(msgspec.Struct, frozen=True, kw_only=True):
    action: Literal["load", "unload"]
    model: str
    # Names a load request, so that exactly one supervisor claims it (see worker.fleet).
    request_id: str = ""


UNLOAD = b"unload"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FleetCommand)


def encode_command(command: FleetCommand) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> FleetCommand:
    return _decoder.decode(data)
