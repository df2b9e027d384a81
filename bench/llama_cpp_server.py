"""`python -m llama_cpp.server` with the CPU buffer and flash attention choices the worker and (a) make.

llama-cpp-python's server has no setting for llama.cpp's extra CPU buffer types, whose
default crashes on CPUs with AMX at the first decode, and only on or off for flash
attention; here its `Llama` is the worker's choosing subclass with the defaults of
INFERENCE_CPU_EXTRA_BUFFERS and INFERENCE_FLASH_ATTENTION, so (b) runs on every CPU the
others run on, with the same weights layout and attention kernel.
"""

from __future__ import annotations

import runpy
from typing import Any

import llama_cpp

from worker.llama_params import ChoosingLlama


class _AutoBuffers(ChoosingLlama):
    def __init__(self, **options: Any) -> None:
        super().__init__(extra_buffers="auto", flash_attention="auto", **options)


if __name__ == "__main__":
    # The server builds its model with `llama_cpp.Llama(...)` (llama_cpp/server/model.py).
    llama_cpp.Llama = _AutoBuffers  # type: ignore[misc]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
