"""The vLLM backend (INFERENCE_BACKEND=vllm), for CUDA servers.

One vLLM engine per worker, shared by all of the worker's concurrent jobs, so vLLM's scheduler
batches them (set INFERENCE_MAX_CONCURRENT_PER_MODEL to 4 or more). It is vLLM's async engine,
`AsyncLLMEngine` (since vLLM's V1 engine an alias of `AsyncLLM`): built with
`from_engine_args(AsyncEngineArgs(...))`, streamed with `async for output in
engine.generate(prompt, sampling_params, request_id)`, stopped with `engine.abort(request_id)`.
Our Engine protocol's `generate` is a blocking call from a worker thread, so the engine lives
on an event loop of its own, on its own thread: each job hands its stream to that loop and
reads the DELTA outputs back through a queue; a cancelled job cancels its stream and aborts
its request. Not the worker's arq loop: the engine's output handler is a task on the loop the
engine was built on, and neither a model load nor a long prompt's tokenization may stall the
worker's heartbeat and Redis traffic.

Tokenizer: each chat prompt is rendered and tokenized on the engine's loop thread, where vLLM's
output handler also detokenizes. Hugging Face's fast tokenizers fail when two threads use one
at once ("Already borrowed"); one thread serializes our jobs' use and vLLM's own.

Settings per model (presets/placement.py: vllm_model, vllm_tokenizer,
vllm_gpu_memory_utilization) over the INFERENCE_VLLM_* ones, else the registry's .gguf file.
vLLM loads single-file GGUF only: a split model (``*-00001-of-0000N.gguf``) is refused with
the command that merges it. With a .gguf and no tokenizer vLLM converts the GGUF's own, slowly
and unreliably for large vocabularies (vLLM's GGUF notes), so the worker warns.

Shutdown: `close()` cancels the streams still open, calls the engine's `shutdown()` (AsyncLLM's
clean-up of its engine-core process and IPC) on the engine's loop, whose task it cancels,
then stops the loop, joins its thread and drops the engine.

Tested against tests/worker/fake_vllm.py, a fake of that API: vLLM needs CUDA, which the
development and CI machines do not have.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import queue
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from presets.placement import Placement
from presets.settings import Settings
from worker.engine import Emit, FinishReason, Outcome, Prompt, PromptRejected, check_fits
from worker.protocol import Message, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")

# llama.cpp's shard naming: the first of N files is <name>-00001-of-0000N.gguf.
_SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.gguf$")
# A job waiting on its outputs looks at its cancel flag this often: the queue cannot also wait on it.
_CANCEL_POLL_S = 0.05
# A wedged engine must not hold a cancelled job or the worker's shutdown forever.
_ABORT_WAIT_S = 5.0
_CLOSE_WAIT_S = 30.0


class SplitGgufError(ValueError):
    def __init__(self, path: str) -> None:
        match = _SPLIT_GGUF.match(Path(path).name)
        merged = Path(path).with_name(f"{match['stem']}.gguf") if match else Path(path)
        super().__init__(
            f"vLLM loads single-file GGUF only and {Path(path).name} is one part of a split model: merge it with "
            f"`llama-gguf-split --merge {path} {merged}` and set the model's vllm_model to {merged}"
        )


@dataclass(frozen=True, kw_only=True)
class VllmOptions:
    """What one worker's vLLM engine loads, resolved by `vllm_options`."""

    model: str
    tokenizer: str | None
    context_tokens: int
    gpu_memory_utilization: float


def vllm_options(
    *, placement: Placement, settings: Settings, context_tokens: int, gguf_path: Callable[[], Path]
) -> VllmOptions:
    """The model's own vLLM settings over INFERENCE_VLLM_*; its .gguf file when neither names a model.

    ``gguf_path`` is only called when needed: a worker serving a Hugging Face id needs no file.
    """
    model = placement.vllm_model or settings.vllm_model or str(gguf_path())
    if _SPLIT_GGUF.match(Path(model).name):
        raise SplitGgufError(model)
    share = placement.vllm_gpu_memory_utilization
    return VllmOptions(
        model=model,
        tokenizer=placement.vllm_tokenizer or settings.vllm_tokenizer,
        context_tokens=context_tokens,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization if share is None else share,
    )


@dataclass(frozen=True)
class _End:
    """Put on a job's queue when its stream ends without a finished output."""

    cancelled: bool


class VllmEngine:
    backend = "vllm"

    def __init__(self, *, model_id: str, options: VllmOptions) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.model_id = model_id
        self.context_length: int = options.context_tokens
        if options.model.endswith(".gguf") and options.tokenizer is None:
            logger.warning(
                "vLLM will convert %s's GGUF tokenizer (slow, unreliable for large vocabularies): "
                "set the model's vllm_tokenizer (or INFERENCE_VLLM_TOKENIZER) to its base model's",
                model_id,
            )
        args = AsyncEngineArgs(
            model=options.model,
            tokenizer=options.tokenizer,
            max_model_len=options.context_tokens,
            gpu_memory_utilization=options.gpu_memory_utilization,
        )
        self._ids = itertools.count()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"vllm-{model_id}", daemon=True)
        self._thread.start()
        self._engine: Any = None
        self._tokenizer: Any = None
        try:
            # Built on its loop: the engine starts its output handler on the loop running it.
            self._engine, self._tokenizer = self._on_loop(self._build(AsyncLLMEngine, args))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _build(factory: Any, args: Any) -> tuple[Any, Any]:
        engine = factory.from_engine_args(args)
        # A coroutine on the EngineClient of earlier vLLM releases, a plain method in later ones.
        tokenizer = engine.get_tokenizer()
        return engine, await tokenizer if inspect.isawaitable(tokenizer) else tokenizer

    def _on_loop(self, work: Coroutine[Any, Any, T], *, timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        tokens = self._on_loop(self._render(chat))
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=tokens, stop=[])

    async def _render(self, chat: list[dict[str, str]]) -> list[int]:
        from jinja2 import TemplateError

        try:
            return list(self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
        except TemplateError as exc:
            raise PromptRejected(exc.message or type(exc).__name__) from None

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        request_id = f"{self.model_id}-{next(self._ids)}"
        sampling = VllmSamplingParams(
            max_tokens=params.max_tokens or self.context_length - len(prompt.tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        outputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        work = self._stream(TokensPrompt(prompt_token_ids=prompt.tokens), sampling, request_id, outputs)
        stream = asyncio.run_coroutine_threadsafe(work, self._loop)
        produced = 0
        reason: FinishReason = "length"
        while True:
            try:
                output = outputs.get(timeout=_CANCEL_POLL_S)
            except queue.Empty:
                output = None
            if isinstance(output, BaseException):
                raise output
            if isinstance(output, _End):
                reason = "cancelled" if output.cancelled else reason
                break
            if output is not None:
                completion = output.outputs[0]
                produced += len(completion.token_ids)
                if completion.text:
                    emit(completion.text)
                if completion.finish_reason is not None:
                    reason = _finish_reason(completion.finish_reason)
                if output.finished:
                    break
            if cancel.is_set():
                self._abort(request_id, stream)
                return Outcome(reason="cancelled", completion_tokens=produced)
        return Outcome(reason=reason, completion_tokens=produced)

    async def _stream(self, prompt: Any, sampling: Any, request_id: str, outputs: queue.SimpleQueue[Any]) -> None:
        try:
            async for output in self._engine.generate(prompt, sampling, request_id):
                outputs.put(output)
        except asyncio.CancelledError:
            # By the job (it has gone) or by close() (it still waits: tell it).
            outputs.put(_End(cancelled=True))
            raise
        except Exception as exc:
            # The job's thread raises it: an engine that died fails the job, not the loop.
            outputs.put(exc)
            return
        outputs.put(_End(cancelled=False))

    def _abort(self, request_id: str, stream: Any) -> None:
        # Cancelling the stream ends our consumer (vLLM aborts a request whose generate() is
        # cancelled); the explicit abort covers a request the engine holds after that.
        stream.cancel()
        try:
            self._on_loop(self._engine.abort(request_id), timeout_s=_ABORT_WAIT_S)
        except TimeoutError:
            logger.warning("vLLM did not confirm the abort of %s within %.0f s", request_id, _ABORT_WAIT_S)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._on_loop(self._shutdown(), timeout_s=_CLOSE_WAIT_S)
        finally:
            self._stop_loop()

    async def _shutdown(self) -> None:
        await _cancel_other_tasks()
        self._engine.shutdown()
        # What the engine left on the loop: a loop closed with pending tasks warns of each.
        await _cancel_other_tasks()
        self._engine = None
        self._tokenizer = None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_CLOSE_WAIT_S)
        if not self._thread.is_alive():
            self._loop.close()


def _finish_reason(vllm_reason: str) -> FinishReason:
    # vLLM's finish reasons: "stop" (EOS or a stop string), "length", "abort".
    if vllm_reason == "abort":
        return "cancelled"
    return "stop" if vllm_reason == "stop" else "length"


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
