"""Jobs whose payload does not decode: from another version of the front, or damaged in Redis.

Running one again cannot help, so it is dropped; when the request's event channel can still
be read from what is left, its client gets an error now instead of waiting for its timeout.
"""

from __future__ import annotations

import logging

import msgspec
from redis.asyncio import Redis

from worker.keys import Keys
from worker.protocol import Failed, encode_event

logger = logging.getLogger(__name__)

INVALID_JOB = Failed(
    code="invalid_job",
    message="The worker could not read this request's job (damaged, or queued by an incompatible front).",
    status=502,
)


def recover_channel(payload: object, *, keys: Keys) -> str | None:
    """The job's event channel, when the payload is still a map that names one of ours."""
    if not isinstance(payload, bytes):
        return None
    try:
        loose = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return None
    if not isinstance(loose, dict):
        return None
    channel = loose.get("channel")
    # Only this service's channels: a damaged record must not make the worker publish elsewhere.
    if isinstance(channel, str) and channel.startswith(keys.events("")):
        return channel
    request_id = loose.get("request_id")
    if isinstance(request_id, str) and request_id:
        return keys.events(request_id)
    return None


async def drop_undecodable(redis: Redis, *, keys: Keys, payload: object, error: Exception) -> bool:
    """Log the job and tell its client if possible; True when an error event went out."""
    channel = recover_channel(payload, keys=keys)
    sample = payload[:200] if isinstance(payload, bytes) else type(payload).__name__
    logger.error("dropping a job that does not decode (%s); payload starts %r", error, sample)
    if channel is None:
        return False
    await redis.publish(channel, encode_event(INVALID_JOB))
    return True
