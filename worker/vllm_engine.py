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

Request parameters go to vLLM's own: `n` (its choices share the prompt's prefill and stream
their DELTA pieces by `CompletionOutput.index`), `logprobs=k` (the sampled token's and the k
likeliest, from the raw model distribution; the entries of a stop string's tokens and of the
end-of-sequence token are dropped, so the tokens sent concatenate to the text sent), and the
worker's GBNF grammar as structured output (`StructuredOutputsParams(grammar=...)` since vLLM
0.11, `GuidedDecodingParams(grammar=...)` before; xgrammar reads GBNF). Tools and tool calls go
to the chat template as Hugging Face's `tools` variable and `tool_calls` messages.

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
from worker.chat_prompt import takes_tools, template_chat
from worker.engine import (
    ChoiceOutcome,
    Emit,
    Outcome,
    Prompt,
    PromptRejected,
    check_fits,
    outcome_of,
    refuse_lazy_grammar,
)
from worker.protocol import Message, SamplingParams, Tool
from worker.tool_formats import ChatFormat, chat_format_for
from worker.vllm_convert import ChoiceStream, PendingLogprobs, structured_output

logger = logging.getLogger(__name__)

T = TypeVar("T")

# llama.cpp's shard naming: the first of N files is <name>-00001-of-0000N.gguf.
_SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.gguf$")
# A job waiting on its outputs looks at its cancel flag this often: the queue cannot also wait on it.
_CANCEL_POLL_S = 0.05
# A wedged engine must not hold a cancelled job or the worker's shutdown forever.
_ABORT_WAIT_S = 5.0
_CLOSE_WAIT_S = 30.0
# A reasoning model's template may end the prompt inside its thinking block.
_OPEN_REASONING = "<think>"


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
        # Read from the registry (and the template) at the first prompt, once the tokenizer is there.
        self._chat_format: ChatFormat | None = None
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

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        refuse_lazy_grammar(params, backend="vllm")
        # A template with no place for tools (Phi-4's) gets them, and earlier calls, as text in the model's format.
        template = getattr(self._tokenizer, "chat_template", None)
        if self._chat_format is None:
            self._chat_format = chat_format_for(model_id=self.model_id, template=template)
        chat, functions = template_chat(
            messages,
            tools=tools,
            native_tools=not isinstance(template, str) or takes_tools(template),
            tool_format=self._chat_format.tool_format,
        )
        tokens, in_reasoning = self._on_loop(self._render(chat, functions))
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=tokens, stop=[], in_reasoning=in_reasoning)

    async def _render(self, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[list[int], bool]:
        from jinja2 import TemplateError

        # The template's own `tools` variable: the model's documented way of being shown its functions.
        options: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            text = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **options)
        except TemplateError as exc:
            raise PromptRejected(exc.message or type(exc).__name__) from None
        # What apply_chat_template(tokenize=True) does, with the text kept to see how the prompt ends.
        tokens = list(self._tokenizer.encode(text, add_special_tokens=False))
        return tokens, text.rstrip().endswith(_OPEN_REASONING)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        from vllm.inputs import TokensPrompt

        request_id = f"{self.model_id}-{next(self._ids)}"
        sampling = self._sampling(prompt, params)
        outputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        work = self._stream(TokensPrompt(prompt_token_ids=prompt.tokens), sampling, request_id, outputs)
        stream = asyncio.run_coroutine_threadsafe(work, self._loop)
        choices = [
            ChoiceStream(PendingLogprobs() if params.logprobs else None, top=params.top_logprobs)
            for _ in range(max(params.n, 1))
        ]
        while True:
            try:
                output = outputs.get(timeout=_CANCEL_POLL_S)
            except queue.Empty:
                output = None
            if isinstance(output, BaseException):
                raise output
            if isinstance(output, _End):
                if output.cancelled:
                    for choice in choices:
                        choice.reason = choice.reason or "cancelled"
                break
            if output is not None:
                # With n > 1 vLLM streams each choice's pieces as they come, several in one output at times.
                for completion in output.outputs:
                    choices[completion.index].take(completion, index=completion.index, emit=emit)
                if output.finished:
                    break
            if cancel.is_set():
                self._abort(request_id, stream)
                for choice in choices:
                    choice.reason = choice.reason or "cancelled"
                break
        return outcome_of(
            [
                ChoiceOutcome(index=i, reason=choice.reason or "length", completion_tokens=choice.produced)
                for i, choice in enumerate(choices)
            ]
        )

    def _sampling(self, prompt: Prompt, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            n=max(params.n, 1),
            max_tokens=params.max_tokens or self.context_length - len(prompt.tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            stop=list(params.stop) or None,
            # vLLM gives each choice i of a seeded request the seed `seed + i`.
            seed=params.seed,
            # The sampled token's and this many alternatives', from the raw model distribution.
            logprobs=params.top_logprobs if params.logprobs else None,
            output_kind=RequestOutputKind.DELTA,
            # vLLM takes no lazy grammar: a call the model starts of its own is parsed, not constrained.
            **structured_output(params.eager_grammar),
        )

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


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
