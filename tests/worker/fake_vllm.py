"""A stand-in for the parts of vLLM's API that worker.vllm_engine uses.

It behaves like vLLM's LLMEngine with DELTA outputs: requests are added, every step()
advances each unfinished request by one token and returns a RequestOutput for each,
max_tokens and stop strings end a request, abort_request drops one.
"""

from __future__ import annotations

import enum
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

WORDS = ["alpha", " beta", " gamma", " delta", " epsilon", " zeta"]


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


@dataclass
class EngineArgs:
    model: str
    tokenizer: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


class Tokenizer:
    def apply_chat_template(
        self, chat: list[dict[str, str]], *, add_generation_prompt: bool, tokenize: bool
    ) -> list[int]:
        assert add_generation_prompt and tokenize
        text = "".join(f"<{m['role']}>{m['content']}" for m in chat) + "<assistant>"
        return [ord(c) for c in text]


@dataclass
class _Running:
    params: SamplingParams
    produced: int = 0
    text: str = ""


@dataclass
class LLMEngine:
    args: EngineArgs
    requests: dict[str, _Running] = field(default_factory=dict)
    steps: list[list[str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        engine = cls(args)
        INSTANCES.append(engine)
        return engine

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def add_request(self, request_id: str, prompt: dict[str, Any], params: SamplingParams) -> None:
        assert params.output_kind is RequestOutputKind.DELTA
        assert prompt["prompt_token_ids"]
        self.requests[request_id] = _Running(params)

    def abort_request(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if self.requests.pop(request_id, None) is not None:
                self.aborted.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        time.sleep(0.002)  # a forward pass takes time, so requests overlap as on a GPU
        outputs = []
        self.steps.append(sorted(self.requests))
        for request_id, running in list(self.requests.items()):
            word = WORDS[running.produced % len(WORDS)]
            running.produced += 1
            running.text += word
            finish = None
            if any(stop in running.text for stop in running.params.stop or []):
                finish, word = "stop", ""
            elif running.params.max_tokens is not None and running.produced >= running.params.max_tokens:
                finish = "length"
            if finish is not None:
                del self.requests[request_id]
            outputs.append(
                RequestOutput(request_id, [CompletionOutput(0, word, [running.produced], finish)], finish is not None)
            )
        return outputs


INSTANCES: list[LLMEngine] = []


def install() -> None:
    """Make `import vllm` (and its submodules used by the engine) find this fake."""
    vllm = types.ModuleType("vllm")
    vllm.EngineArgs = EngineArgs  # type: ignore[attr-defined]
    vllm.LLMEngine = LLMEngine  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda *, prompt_token_ids: {"prompt_token_ids": prompt_token_ids}  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    sys.modules.update({"vllm": vllm, "vllm.inputs": inputs, "vllm.sampling_params": sampling})
