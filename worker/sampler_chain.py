"""A sequence's sampling in native llama.cpp samplers, built from a request's sampling parameters."""

from __future__ import annotations

import ctypes
import math
import os
from typing import Any, Protocol

import llama_cpp
import numpy as np

from worker.grammar import InvalidSchema
from worker.protocol import SamplingParams

# llama-cpp-python's high-level sampler settings, which LlamaEngine runs with: the same
# request samples the same way on either engine.
TOP_K = 40
MIN_P = 0.05

# llama_token_data as numpy lays it out: a whole vocabulary filled in one vectorised copy.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class Sampler(Protocol):
    def sample(self, ctx: Any, row: int) -> int:
        """Picks (and accepts) the next token from the logits of batch row `row`."""
        ...

    def free(self) -> None: ...


def build_sampler(params: SamplingParams, *, vocab: Any, n_vocab: int, limit_tokens: int, choice: int = 0) -> Sampler:
    """The chain top-k, penalties, then greedy or top-p, min-p, temperature and a seeded draw; and the grammar.

    Choice `i` of a seeded request draws with seed + i, so its choices differ and each
    repeats. InvalidSchema when the request's grammar does not parse.
    """
    chain = _chain(params, n_vocab=n_vocab, limit_tokens=limit_tokens, choice=choice)
    if params.grammar is None:
        return ChainSampler(chain)
    grammar = _grammar_sampler(params.grammar, params.grammar_triggers, vocab=vocab)
    if not grammar:
        llama_cpp.llama_sampler_free(chain)
        raise InvalidSchema("llama.cpp cannot parse the grammar made for this request")
    return GrammarSampler(chain=chain, grammar=grammar, n_vocab=n_vocab)


def _grammar_sampler(grammar: str, triggers: list[str], *, vocab: Any) -> Any:
    if not triggers:
        return llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.encode(), b"root", patterns, len(triggers), None, 0
    )


class ChainSampler:
    """The chain alone: llama.cpp reads the logits, applies it and accepts the token."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain

    def sample(self, ctx: Any, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, row))

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class GrammarSampler:
    """The chain's pick, checked against the grammar; only a pick it refuses costs a constrained draw.

    The grammar must hold before greedy or the draw picks, but weighing every token of the
    vocabulary against it costs milliseconds a step. So the unconstrained pick is checked
    alone first, and only when the grammar refuses it is the vocabulary constrained and the
    chain applied again (as llama.cpp's own server samples). Greedy picks the same token
    either way. A draw the grammar allows is kept, else one is drawn among the allowed
    tokens: rejection sampling, the constrained distribution itself where no top-k or top-p
    cut differs between the two draws. Once complete the grammar allows only end-of-generation.
    """

    def __init__(self, *, chain: Any, grammar: Any, n_vocab: int) -> None:
        self._chain = chain
        self._grammar = grammar
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._all = llama_cpp.llama_token_data_array(
            data=self._data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=n_vocab
        )
        self._one_data = (llama_cpp.llama_token_data * 1)()
        self._one = llama_cpp.llama_token_data_array(data=self._one_data, size=1)
        self._n_vocab = n_vocab

    def sample(self, ctx: Any, row: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(self._n_vocab,))
        token = self._apply(logits, constrained=False)
        if not self._allows(token):
            token = self._apply(logits, constrained=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            llama_cpp.llama_sampler_free(self._grammar)
            self._chain = self._grammar = None

    def _apply(self, logits: Any, *, constrained: bool) -> int:
        # The chain sorts and shortens the array in place: fill it afresh each time.
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        cur = self._all
        cur.size = self._n_vocab
        cur.selected = -1
        cur.sorted = False
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise RuntimeError("the sampler chain selected no token")
        # Read through the array, not the buffer: a sampler may point it elsewhere.
        return int(cur.data[cur.selected].id)

    def _allows(self, token: int) -> bool:
        one = self._one
        self._one_data[0] = llama_cpp.llama_token_data(token, 0.0, 0.0)
        one.size = 1
        one.selected = -1
        one.sorted = False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(one))
        return not math.isinf(self._one_data[0].logit)


def _chain(params: SamplingParams, *, n_vocab: int, limit_tokens: int, choice: int) -> Any:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    penalised = bool(params.frequency_penalty or params.presence_penalty)
    if penalised or params.temperature > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
    if penalised:
        # Over the whole completion (OpenAI's "so far"); after top-k, where it costs 40 lookups, not the vocabulary.
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, limit_tokens, 1.0, params.frequency_penalty, params.presence_penalty
            ),
        )
    if params.temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    # Without a request seed, draw one, so runs differ like other servers'.
    seed = params.seed + choice if params.seed is not None else int.from_bytes(os.urandom(4), "little")
    add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
