"""llama.cpp model parameters carrying this host's CPU choice (see worker/hardware.py) and the
model's GPU placement (gpu_layers, main_gpu, tensor_split: see presets/placement.py), and the
context's flash attention choice (INFERENCE_FLASH_ATTENTION).

Two ways in, one decision: `model_params` for engines that load the model through the
low-level API, `open_llama` (with `gpu_options`) for engines built on llama-cpp-python's
high-level `Llama`.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama

from presets.settings import FlashAttention
from worker.hardware import ExtraBuffers, use_extra_buffers

logger = logging.getLogger(__name__)

# llama.cpp's "every layer" for n_gpu_layers (Llama maps -1 to it the same way).
_ALL_LAYERS = 0x7FFFFFFF

# Auto is llama.cpp's own: the fused kernel unless the device that holds a layer's KV cache
# cannot run it (a CPU always can).
_FLASH_ATTN_TYPES: dict[FlashAttention, int] = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def flash_attn_type(setting: FlashAttention) -> int:
    """llama.cpp's flash_attn_type for INFERENCE_FLASH_ATTENTION."""
    return _FLASH_ATTN_TYPES[setting]


def apply_cpu_choice(params: llama_cpp.llama_model_params, *, setting: ExtraBuffers) -> None:
    """Allow or forbid the repacked CPU weight layouts on params, before the model loads."""
    enabled = use_extra_buffers(setting)
    params.use_extra_bufts = enabled
    if not enabled and setting == "auto":
        logger.info("llama.cpp extra CPU buffer types off: this CPU has AMX (INFERENCE_CPU_EXTRA_BUFFERS=on forces)")


def split_mode(*, main_gpu: int | None, tensor_split: Sequence[float] | None) -> int:
    """How llama.cpp spreads the model over the visible GPUs.

    Under llama.cpp's default (by layer) main_gpu is ignored, so a main_gpu without a
    tensor_split means what presets/placement.py says: that one device holds the whole model.
    """
    if main_gpu is not None and tensor_split is None:
        return int(llama_cpp.LLAMA_SPLIT_MODE_NONE)
    return int(llama_cpp.LLAMA_SPLIT_MODE_LAYER)


def _check_split(tensor_split: Sequence[float]) -> None:
    if len(tensor_split) > llama_cpp.LLAMA_MAX_DEVICES:
        most = llama_cpp.LLAMA_MAX_DEVICES
        raise ValueError(f"tensor_split has {len(tensor_split)} shares; this llama.cpp supports {most} devices")


def model_params(
    *,
    setting: ExtraBuffers,
    gpu_layers: int,
    main_gpu: int | None = None,
    tensor_split: Sequence[float] | None = None,
) -> llama_cpp.llama_model_params:
    """llama.cpp's default model params with the GPU placement and the CPU choice applied."""
    params: llama_cpp.llama_model_params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = _ALL_LAYERS if gpu_layers < 0 else gpu_layers
    params.split_mode = split_mode(main_gpu=main_gpu, tensor_split=tensor_split)
    if main_gpu is not None:
        params.main_gpu = main_gpu
    if tensor_split is not None:
        _check_split(tensor_split)
        # llama.cpp reads llama_max_devices() floats; the unnamed shares stay 0. ctypes keeps
        # the array alive as long as params (the struct holds a reference in its _objects).
        params.tensor_split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*tensor_split)
    apply_cpu_choice(params, setting=setting)
    return params


def gpu_options(
    *, gpu_layers: int, main_gpu: int | None = None, tensor_split: Sequence[float] | None = None
) -> dict[str, Any]:
    """The same placement as `model_params`, as keyword arguments of `Llama`."""
    options: dict[str, Any] = {
        # Llama maps -1 to every layer itself.
        "n_gpu_layers": gpu_layers,
        "split_mode": split_mode(main_gpu=main_gpu, tensor_split=tensor_split),
    }
    if main_gpu is not None:
        options["main_gpu"] = main_gpu
    if tensor_split is not None:
        _check_split(tensor_split)
        options["tensor_split"] = list(tensor_split)
    return options


class ChoosingLlama(Llama):
    """`Llama` whose model params get the CPU choice before its model loads, and whose context
    params the flash attention choice before its context is made.

    Llama 0.3.36 takes no `use_extra_bufts` argument and only on or off for flash attention:
    it builds `self.model_params` and `self.context_params` from llama.cpp's defaults in its
    constructor, fills them in and makes the model and context from those structs. Catching
    the assignment keeps the CPU choice on this one instance (no patched module attribute);
    the context params are handed out with the flash attention choice written afresh on every
    read, so the read that makes the context carries it whatever Llama wrote in between.
    """

    def __init__(self, *, extra_buffers: ExtraBuffers, flash_attention: FlashAttention, **options: Any) -> None:
        self._extra_buffers: ExtraBuffers = extra_buffers
        self._flash_attn_type = flash_attn_type(flash_attention)
        super().__init__(**options)

    @property
    def model_params(self) -> llama_cpp.llama_model_params:
        params: llama_cpp.llama_model_params = self.__dict__["_chosen_model_params"]
        return params

    @model_params.setter
    def model_params(self, params: llama_cpp.llama_model_params) -> None:
        apply_cpu_choice(params, setting=self._extra_buffers)
        self.__dict__["_chosen_model_params"] = params

    @property
    def context_params(self) -> llama_cpp.llama_context_params:
        params: llama_cpp.llama_context_params = self.__dict__["_chosen_context_params"]
        params.flash_attn_type = self._flash_attn_type
        return params

    @context_params.setter
    def context_params(self, params: llama_cpp.llama_context_params) -> None:
        self.__dict__["_chosen_context_params"] = params


def open_llama(*, path: Path, extra_buffers: ExtraBuffers, flash_attention: FlashAttention, **options: Any) -> Llama:
    """Load a model with `Llama`, honouring INFERENCE_CPU_EXTRA_BUFFERS and INFERENCE_FLASH_ATTENTION."""
    llm = ChoosingLlama(model_path=str(path), extra_buffers=extra_buffers, flash_attention=flash_attention, **options)
    # A later llama-cpp-python that no longer assigns self.model_params would load the model
    # without the choice: on an AMX CPU that crashes at the first decode, so say why here.
    if "_chosen_model_params" not in llm.__dict__ or "_chosen_context_params" not in llm.__dict__:
        llm.close()
        raise RuntimeError("this llama-cpp-python ignores the buffer or attention choice; see worker/llama_params.py")
    return llm
