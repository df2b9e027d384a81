"""GPU placement in llama.cpp's model params and in Llama's arguments (no GPU needed: the fields are read back)."""

from __future__ import annotations

import gc
from pathlib import Path

import llama_cpp
import pytest

from presets.embedded import resolve_embedded
from worker.llama_params import gpu_options, model_params, open_llama


def test_the_default_offloads_every_layer_split_by_layer_with_no_shares() -> None:
    params = model_params(setting="off", gpu_layers=-1)
    assert params.n_gpu_layers == 0x7FFFFFFF
    assert params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER
    assert not params.tensor_split  # NULL: llama.cpp splits by each device's free memory


def test_tensor_split_fills_llama_cpps_array_of_every_device() -> None:
    params = model_params(setting="off", gpu_layers=20, tensor_split=(0.67, 0.33))
    gc.collect()  # the array must live as long as the params that point at it
    shares = [params.tensor_split[i] for i in range(llama_cpp.LLAMA_MAX_DEVICES)]
    assert shares[:2] == pytest.approx([0.67, 0.33])
    assert shares[2:] == [0.0] * (llama_cpp.LLAMA_MAX_DEVICES - 2)
    assert params.n_gpu_layers == 20
    assert params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER


def test_main_gpu_alone_puts_the_whole_model_on_that_device() -> None:
    params = model_params(setting="off", gpu_layers=-1, main_gpu=1)
    assert params.main_gpu == 1
    # llama.cpp ignores main_gpu when it splits by layer.
    assert params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_NONE


def test_more_shares_than_devices_is_refused() -> None:
    too_many = (1.0,) * (llama_cpp.LLAMA_MAX_DEVICES + 1)
    with pytest.raises(ValueError, match="tensor_split has"):
        model_params(setting="off", gpu_layers=-1, tensor_split=too_many)
    with pytest.raises(ValueError, match="tensor_split has"):
        gpu_options(gpu_layers=-1, tensor_split=too_many)


def test_llamas_arguments_carry_the_same_placement() -> None:
    assert gpu_options(gpu_layers=-1) == {"n_gpu_layers": -1, "split_mode": llama_cpp.LLAMA_SPLIT_MODE_LAYER}
    assert gpu_options(gpu_layers=8, main_gpu=1) == {
        "n_gpu_layers": 8,
        "split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE,
        "main_gpu": 1,
    }
    assert gpu_options(gpu_layers=-1, main_gpu=0, tensor_split=(3, 1)) == {
        "n_gpu_layers": -1,
        "split_mode": llama_cpp.LLAMA_SPLIT_MODE_LAYER,
        "main_gpu": 0,
        "tensor_split": [3, 1],
    }


def test_llama_loads_with_the_placement_in_its_model_params(tmp_path: Path) -> None:
    path = resolve_embedded("smollm2-135m", models_dir=tmp_path)
    # On a CPU-only build llama.cpp has no GPU to spread over, so the split loads the model on the CPU.
    llm = open_llama(
        path=path,
        extra_buffers="auto",
        flash_attention="auto",
        n_ctx=256,
        verbose=False,
        **gpu_options(gpu_layers=0, main_gpu=0, tensor_split=(1.0, 2.0)),
    )
    try:
        params = llm.model_params
        assert (params.tensor_split[0], params.tensor_split[1], params.main_gpu) == (1.0, 2.0, 0)
        assert params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER
    finally:
        llm.close()
