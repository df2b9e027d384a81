"""Continuous batching over one llama.cpp context: N sequence slots, one decode per step.

A scheduler thread owns the context. Each step it admits waiting sequences into free
slots, puts the next token of every generating sequence and chunks of the prompts still
being read into one `llama_batch`, decodes it, and samples each sequence's next token with
the sequence's own native sampler chain. Each sampled token goes to its sequence's
`on_token` right there (detokenize, stop strings, emit): a thread hop per token would wake a
second Python thread while llama.cpp's threads spin on the same cores. A job's thread only
waits for its sequence to end.

A slot keeps the tokens of its last sequence in the KV cache after it ends: a new prompt
that begins with them (a shared system prompt, the next turn of a chat) is placed in the
free slot with the longest common prefix and only its remainder is read.

With llama.cpp's non-unified KV cache each slot's sequence has a stream of cells of its own,
and a slot's cached tokens are its own stream's. With a shared (unified) cache the slots
draw on one pool of cells; a sequence is then admitted once the pool can hold its prompt plus
its whole completion budget, so a decode never runs out of cells midway.

The choices of one prompt (n > 1) read it once: the first is admitted, the others follow it.
Once the prompt is decoded, each follower that finds a free slot gets a copy of its cells
(`llama_memory_seq_cp`: between the streams of a non-unified cache a copy of the whole
stream, made by the next decode before it writes; shared cells in a unified one) and samples
its first token from the same logits. The rest wait at the head of the queue for a slot.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import llama_cpp

from worker.core_share import CoreShare, Seat
from worker.sampler_chain import Sampler

logger = logging.getLogger(__name__)

EndReason = Literal["stop", "length", "cancelled"]
# Takes each sampled token (end-of-generation tokens excepted) and the batch row whose logits
# it came from, readable until the next decode; True ends the sequence ("stop").
OnToken = Callable[[int, int], bool]


@dataclass(eq=False, kw_only=True)
class SequenceRequest:
    """One generation handed to the scheduler; the sampler becomes the scheduler's to free."""

    tokens: list[int]
    limit_tokens: int
    sampler: Sampler
    cancel: threading.Event
    on_token: OnToken
    finished: threading.Event = field(default_factory=threading.Event)
    reason: EndReason = "length"
    error: Exception | None = None
    # Choices of the same prompt that start from this sequence's prefill (see the module's docstring).
    followers: list[SequenceRequest] = field(default_factory=list)
    # Scheduler-side progress.
    pending: list[int] = field(default_factory=list)
    produced: int = 0
    next_token: int = -1
    slot: _Slot | None = None

    @property
    def cells_needed(self) -> int:
        return len(self.tokens) + self.limit_tokens


@dataclass(eq=False)
class _Slot:
    seq_id: int
    # The tokens whose keys and values this sequence holds in the KV cache, in position order.
    history: list[int] = field(default_factory=list)
    request: SequenceRequest | None = None
    last_used: int = 0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BatchScheduler:
    """Owns a llama.cpp context with `slots` sequences; `submit` is safe from any thread."""

    def __init__(
        self,
        *,
        ctx: Any,
        vocab: Any,
        slots: int,
        shared_cells: int | None,
        batch_tokens: int,
        prefill_chunk_tokens: int,
        n_swa: int,
        core_share: CoreShare | None = None,
    ) -> None:
        self._ctx = ctx
        self._cores = core_share
        # Held while any sequence waits or runs (see worker/core_share.py).
        self._seat: Seat | None = None
        self._vocab = vocab
        self._memory = llama_cpp.llama_get_memory(ctx)
        # None: each slot has a stream of cells of its own, and any free slot can take a request.
        self._shared_cells = shared_cells
        self._batch_tokens = batch_tokens
        self._prefill_chunk_tokens = min(prefill_chunk_tokens, batch_tokens)
        self._n_swa = n_swa
        self._slots = [_Slot(seq_id=i) for i in range(slots)]
        self._waiting: deque[SequenceRequest] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._steps = 0
        # Prompt tokens actually decoded (not taken from a slot's cache): tests and benchmarks read it.
        self.prefilled_tokens = 0
        # The batch's arrays, owned here so that a step fills them with slice assignments
        # (one C loop per array) instead of a Python call per token. Typed Any: typeshed's
        # ctypes slices take only lists of the exact element type.
        self._tokens: Any = (ctypes.c_int32 * batch_tokens)()
        self._positions: Any = (ctypes.c_int32 * batch_tokens)()
        self._seq_counts: Any = (ctypes.c_int32 * batch_tokens)(*([1] * batch_tokens))
        self._seq_ids: Any = (ctypes.POINTER(ctypes.c_int32) * batch_tokens)()
        self._outputs: Any = (ctypes.c_int8 * batch_tokens)()
        # Every token of a batch names one sequence: point at one constant cell per sequence.
        self._seq_cells = [(ctypes.c_int32 * 1)(i) for i in range(slots)]
        self._seq_pointers = [ctypes.cast(cell, ctypes.POINTER(ctypes.c_int32)) for cell in self._seq_cells]
        # llama-cpp-python annotates these pointer fields as arrays; they take pointers.
        self._batch = cast(Any, llama_cpp.llama_batch())
        self._batch.token = ctypes.cast(self._tokens, ctypes.POINTER(ctypes.c_int32))
        self._batch.embd = ctypes.POINTER(ctypes.c_float)()
        self._batch.pos = ctypes.cast(self._positions, ctypes.POINTER(ctypes.c_int32))
        self._batch.n_seq_id = ctypes.cast(self._seq_counts, ctypes.POINTER(ctypes.c_int32))
        self._batch.seq_id = ctypes.cast(self._seq_ids, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)))
        self._batch.logits = ctypes.cast(self._outputs, ctypes.POINTER(ctypes.c_int8))
        # Wraps the hand-on of one step's tokens (see GroupsHandOns in worker/engine.py).
        self.hand_on_scope: Callable[[], AbstractContextManager[None]] = nullcontext
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    def submit(self, request: SequenceRequest) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(request)
            self._wake.notify()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def active_sequences(self) -> int:
        return sum(slot.request is not None for slot in self._slots)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._idle():
                    self._leave_seat()
                while self._idle():
                    self._wake.wait()
                if self._closed:
                    break
            try:
                if self._cores is not None:
                    if self._seat is None:
                        self._seat = self._cores.seat()
                    self._seat.apply_to(self._ctx)
                self._step()
            except Exception as exc:
                # The sequences of a failed step end with the error (their jobs report it);
                # the slots are emptied and the engine goes on with the next requests.
                logger.exception("a batch step failed")
                self._fail_running(exc)
        self._fail_running(RuntimeError("the engine is closed"))
        self._leave_seat()

    def _idle(self) -> bool:
        return not self._closed and not self._waiting and not self.active_sequences

    def _leave_seat(self) -> None:
        if self._seat is not None:
            self._seat.close()
            self._seat = None

    def _step(self) -> None:
        self._steps += 1
        self._end_finished()
        self._admit()
        tokens: list[int] = []
        positions: list[int] = []
        pointers: list[Any] = []
        outputs: list[int] = []
        sampled: list[tuple[SequenceRequest, int]] = []
        prefilling: list[SequenceRequest] = []
        # Sequences whose prompt this step completes, with choices waiting to start from it.
        forks: list[tuple[SequenceRequest, int]] = []
        for slot in self._slots:
            request = slot.request
            if request is None:
                continue
            if request.pending:
                prefilling.append(request)
                continue
            sampled.append((request, len(tokens)))
            tokens.append(request.next_token)
            positions.append(len(slot.history))
            pointers.append(self._seq_pointers[slot.seq_id])
            outputs.append(1)
            slot.history.append(request.next_token)
        # Alone, a prompt is read in full batches; beside generating sequences, in chunks
        # small enough that their next token is not held up long.
        room = self._batch_tokens - len(tokens)
        budget = room if not tokens else min(self._prefill_chunk_tokens, room)
        for request in prefilling:
            if budget <= 0:
                break
            owner = request.slot
            assert owner is not None
            chunk = request.pending[:budget]
            del request.pending[:budget]
            budget -= len(chunk)
            start = len(owner.history)
            tokens += chunk
            positions += range(start, start + len(chunk))
            pointers += [self._seq_pointers[owner.seq_id]] * len(chunk)
            outputs += [0] * len(chunk)
            owner.history += chunk
            self.prefilled_tokens += len(chunk)
            if not request.pending:
                # The prompt's last token gives the logits of the first completion token.
                outputs[-1] = 1
                sampled.append((request, len(tokens) - 1))
                if request.followers:
                    forks.append((request, len(tokens) - 1))
        if not tokens:
            return
        n = len(tokens)
        self._tokens[:n] = tokens
        self._positions[:n] = positions
        self._seq_ids[:n] = pointers
        self._outputs[:n] = outputs
        self._batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        for request, index in forks:
            sampled += self._fork(request, index)
        is_end = llama_cpp.llama_vocab_is_eog
        # Every sequence is sampled before any token is handed on: each ctypes call lets go
        # of the GIL, and a job's event loop woken between two hand-ons would send this step's
        # tokens to Redis in several round trips instead of one.
        ctx = self._ctx
        picked = [(request, request.sampler.sample(ctx, index), index) for request, index in sampled]
        ends = [bool(is_end(self._vocab, token)) for _, token, _ in picked]
        with self.hand_on_scope():
            for (request, token, index), end in zip(picked, ends, strict=True):
                self._hand_on(request, token, index, end=end)

    def _hand_on(self, request: SequenceRequest, token: int, row: int, *, end: bool) -> None:
        if end:
            self._release(request, "stop")
            return
        request.produced += 1
        try:
            stop = request.on_token(token, row)
        except Exception as exc:
            request.error = exc
            self._release(request, "cancelled")
            return
        if stop:
            self._release(request, "stop")
        elif request.produced >= request.limit_tokens:
            self._release(request, "length")
        else:
            request.next_token = token

    def _end_finished(self) -> None:
        for slot in self._slots:
            request = slot.request
            if request is None:
                continue
            if request.cancel.is_set():
                self._release(request, "cancelled")

    def _admit(self) -> None:
        with self._wake:
            while self._waiting:
                request = self._waiting[0]
                if request.cancel.is_set():
                    self._waiting.popleft()
                    self._finish(request, "cancelled")
                    continue
                if not self._place(request):
                    return
                self._waiting.popleft()

    def _place(self, request: SequenceRequest) -> bool:
        """Give the request a free slot, reusing the longest cached prefix; False when none fits yet."""
        free = [slot for slot in self._slots if slot.request is None]
        if not free:
            return False
        # Keep at least one prompt token to decode: its logits start the completion.
        usable = len(request.tokens) - 1
        scored = [(min(common_prefix_length(slot.history, request.tokens), usable), slot) for slot in free]
        reuse, slot = max(scored, key=lambda pair: (pair[0], -pair[1].last_used))
        if not self._has_room(request, slot):
            return False
        reuse = self._truncate(slot, reuse)
        slot.request = request
        request.slot = slot
        request.pending = request.tokens[reuse:]
        return True

    def _has_room(self, request: SequenceRequest, slot: _Slot) -> bool:
        """Whether a shared pool of cells holds the request in `slot`, evicting idle caches if need be."""
        if self._shared_cells is None:
            return True
        cells = self._shared_cells
        claimed = sum(
            max(len(s.history), s.request.cells_needed if s.request else 0) for s in self._slots if s is not slot
        )
        if claimed + request.cells_needed > cells:
            claimed -= self._evict_for(claimed + request.cells_needed - cells, keep=slot)
        return claimed + request.cells_needed <= cells

    def _fork(self, leader: SequenceRequest, row: int) -> list[tuple[SequenceRequest, int]]:
        """Starts the leader's followers from its just-decoded prompt; those without a free slot queue first."""
        source = leader.slot
        assert source is not None
        started: list[tuple[SequenceRequest, int]] = []
        while leader.followers:
            free = sorted((s for s in self._slots if s.request is None), key=lambda s: s.last_used)
            if not free or not self._has_room(leader.followers[0], free[0]):
                break
            # In its slot first: should a call below fail, the failed step ends it like the others.
            follower, slot = leader.followers.pop(0), free[0]
            slot.request, follower.slot = follower, slot
            self._truncate(slot, 0)
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, slot.seq_id, -1, -1)
            slot.history = list(source.history)
            # Sampled from the row of the leader's last prompt token, like the leader.
            started.append((follower, row))
        with self._wake:
            self._waiting.extendleft(reversed(leader.followers))
        leader.followers = []
        return started

    def _truncate(self, slot: _Slot, keep: int) -> int:
        """Drop the slot's cached tokens from `keep` on; how many stay (0 when the cache cannot be cut there)."""
        memory = self._memory
        if keep > 0 and self._n_swa > 0:
            # A sliding-window cache may already have dropped the window that position `keep` attends to.
            oldest = llama_cpp.llama_memory_seq_pos_min(memory, slot.seq_id)
            if oldest > max(0, keep - self._n_swa):
                keep = 0
        if keep > 0 and llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, keep, -1):
            del slot.history[keep:]
            return keep
        llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
        slot.history.clear()
        return 0

    def _evict_for(self, cells: int, *, keep: _Slot) -> int:
        """Empty the caches of free slots, least recently used first, until `cells` are freed."""
        freed = 0
        idle = sorted((s for s in self._slots if s.request is None and s is not keep), key=lambda s: s.last_used)
        for slot in idle:
            if freed >= cells:
                break
            freed += len(slot.history)
            self._truncate(slot, 0)
        return freed

    def _release(self, request: SequenceRequest, reason: EndReason) -> None:
        slot = request.slot
        if slot is not None:
            slot.request = None
            slot.last_used = self._steps
            request.slot = None
        self._finish(request, reason)

    def _finish(self, request: SequenceRequest, reason: EndReason) -> None:
        # Followers still waiting on the prompt end with it (a cancel, a failed step, closing).
        followers, request.followers = request.followers, []
        for follower in followers:
            follower.error = follower.error or request.error
            self._finish(follower, reason)
        request.reason = reason
        request.sampler.free()
        request.finished.set()

    def _fail_running(self, error: Exception) -> None:
        """End every sequence in a slot, and once closed every waiting one, with `error`."""
        with self._wake:
            waiting = list(self._waiting) if self._closed else []
            if self._closed:
                self._waiting.clear()
        for request in [*waiting, *(s.request for s in self._slots if s.request is not None)]:
            request.error = error
            slot = request.slot
            self._release(request, "cancelled")
            if slot is not None:
                self._truncate(slot, 0)
