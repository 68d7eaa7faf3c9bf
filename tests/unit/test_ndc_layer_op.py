"""The lean NDC layer as one opaque operator under torch.compile, and what it saves under autocast.

Compiled with an aot_autograd backend that records the forward and backward graphs (CPU-runnable):
the NDC appears as one node per direction whatever the slab count, no slab write becomes a
full-tensor slice_scatter, and values and gradients equal the eager layer's.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import nnunet_deconver.layers.ndc_lean as ndc_lean
from nnunet_deconver.analysis.memory import saved_tensor_bytes
from nnunet_deconver.blocks.deconv_mixer import DeconvMixer
from nnunet_deconver.layers.compute import TF32_VARIABLE, ndc_allows_tf32, ndc_convolution_precision

CHANNELS = 4


class _GraphRecorder:
    """An aot_autograd backend keeping the forward and backward FX graphs it was given."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def _record(self, graph: torch.fx.GraphModule, _inputs):
        self.graphs.append(graph)
        return make_boxed_func(graph.forward)

    def backend(self):
        return aot_autograd(fw_compiler=self._record, bw_compiler=self._record)

    def targets(self) -> list[str]:
        return [str(node.target) for graph in self.graphs for node in graph.graph.nodes if node.op == "call_function"]


def _mixer_and_input(dims: int) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    mixer = DeconvMixer(CHANNELS, nn.Conv3d if dims == 3 else nn.Conv2d, kernel_size=3, ratio=4)
    x = torch.rand(2, CHANNELS, *((6, 5, 4) if dims == 3 else (12, 10)), requires_grad=True)
    return mixer, x


def _compiled_values(mixer: nn.Module, x: Tensor) -> tuple[_GraphRecorder, list[Tensor]]:
    recorder = _GraphRecorder()
    torch._dynamo.reset()
    compiled = torch.compile(mixer, backend=recorder.backend(), fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), (x, *mixer.parameters()))
    return recorder, [out, *grads]


@pytest.mark.parametrize("dims", [2, 3])
def test_compiled_graph_holds_one_ndc_node_per_direction_whatever_the_slab_count(dims, monkeypatch) -> None:
    mixer, x = _mixer_and_input(dims)
    out = mixer(x)
    eager = [out, *torch.autograd.grad(out.square().sum(), (x, *mixer.parameters()))]

    one_slab, one_slab_values = _compiled_values(mixer, x)
    monkeypatch.setattr(ndc_lean, "_SLAB_BYTES", 1)  # one plane per slab: many slabs
    monkeypatch.setenv("NNUNET_DECONVER_NDC_KERNEL", "torch")  # the slab path, not the fused kernel
    assert len(list(ndc_lean._slabs(torch.empty(2, 4 * CHANNELS, *x.shape[2:])))) == 2 * x.shape[2]
    many_slabs, many_slab_values = _compiled_values(mixer, x)

    for recorder in (one_slab, many_slabs):
        targets = recorder.targets()
        assert targets.count("nnunet_deconver.ndc_layer.default") == 1
        assert targets.count("nnunet_deconver.ndc_layer_backward.default") == 1
        assert not any("slice_scatter" in target for target in targets)
    assert len(one_slab.targets()) == len(many_slabs.targets())
    for values in (one_slab_values, many_slab_values):
        for got, expected in zip(values, eager, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_layer_saves_its_input_in_the_autocast_dtype() -> None:
    """Under fp16 autocast the mixer's NDC keeps its fp16 input, no float32 copy and no S0 (R*C channels)."""
    mixer, x = _mixer_and_input(3)
    with torch.autocast("cpu", dtype=torch.float16):
        ndc_input = torch.relu(mixer.project_in(x)).detach()
        assert ndc_input.dtype == torch.float16
        saved = saved_tensor_bytes(lambda: mixer.ndc(ndc_input.requires_grad_()), exclude=mixer.parameters())
    assert saved == ndc_input.numel() * 2 + sum(p.numel() * 4 for p in (mixer.ndc.weight,))


@pytest.mark.parametrize("setting,expected", [(None, False), ("0", False), ("1", True)])
@pytest.mark.parametrize("user_flag", [True, False])
def test_ndc_convolutions_use_tf32_only_when_asked(setting, expected, user_flag, monkeypatch) -> None:
    """On CUDA the NDC convolutions run in true float32 unless NNUNET_DECONVER_NDC_TF32=1; the user's own
    cuDNN TF32 flag is restored afterwards, and other devices are left alone."""
    if setting is None:
        monkeypatch.delenv(TF32_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TF32_VARIABLE, setting)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", user_flag)
    with ndc_convolution_precision(torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 is expected
    assert torch.backends.cudnn.allow_tf32 is user_flag
    with ndc_convolution_precision(torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 is user_flag


def test_invalid_tf32_setting_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(TF32_VARIABLE, "yes")
    with pytest.raises(ValueError, match="NNUNET_DECONVER_NDC_TF32 must be 0"):
        ndc_allows_tf32()
