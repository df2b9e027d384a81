"""llama.cpp model parameters carrying this host's CPU choice (see worker/hardware.py).

Two ways in, one decision: `model_params` for engines that load the model through the
low-level API, `open_llama` for engines built on llama-cpp-python's high-level `Llama`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama

from worker.hardware import ExtraBuffers, use_extra_buffers

logger = logging.getLogger(__name__)

# llama.cpp's "every layer" for n_gpu_layers (Llama maps -1 to it the same way).
_ALL_LAYERS = 0x7FFFFFFF


def apply_cpu_choice(params: llama_cpp.llama_model_params, *, setting: ExtraBuffers) -> None:
    """Allow or forbid the repacked CPU weight layouts on params, before the model loads."""
    enabled = use_extra_buffers(setting)
    params.use_extra_bufts = enabled
    if not enabled and setting == "auto":
        logger.info("llama.cpp extra CPU buffer types off: this CPU has AMX (INFERENCE_CPU_EXTRA_BUFFERS=on forces)")


def model_params(*, setting: ExtraBuffers, gpu_layers: int) -> llama_cpp.llama_model_params:
    """llama.cpp's default model params with the GPU layers and the CPU choice applied."""
    params: llama_cpp.llama_model_params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = _ALL_LAYERS if gpu_layers < 0 else gpu_layers
    apply_cpu_choice(params, setting=setting)
    return params


class _ChoosingLlama(Llama):
    """`Llama` whose model params get the CPU choice before its model loads.

    Llama 0.3.36 takes no `use_extra_bufts` argument: it builds `self.model_params` from
    llama.cpp's defaults in its constructor and loads the model from that struct. Catching
    the assignment keeps the choice on this one instance (no patched module attribute).
    """

    def __init__(self, *, extra_buffers: ExtraBuffers, **options: Any) -> None:
        self._extra_buffers: ExtraBuffers = extra_buffers
        super().__init__(**options)

    @property
    def model_params(self) -> llama_cpp.llama_model_params:
        params: llama_cpp.llama_model_params = self.__dict__["_chosen_model_params"]
        return params

    @model_params.setter
    def model_params(self, params: llama_cpp.llama_model_params) -> None:
        apply_cpu_choice(params, setting=self._extra_buffers)
        self.__dict__["_chosen_model_params"] = params


def open_llama(*, path: Path, extra_buffers: ExtraBuffers, **options: Any) -> Llama:
    """Load a model with `Llama`, honouring INFERENCE_CPU_EXTRA_BUFFERS."""
    llm = _ChoosingLlama(model_path=str(path), extra_buffers=extra_buffers, **options)
    # A later llama-cpp-python that no longer assigns self.model_params would load the model
    # without the choice: on an AMX CPU that crashes at the first decode, so say why here.
    if "_chosen_model_params" not in llm.__dict__:
        llm.close()
        raise RuntimeError("this llama-cpp-python ignores the CPU buffer choice; see worker/llama_params.py")
    return llm
