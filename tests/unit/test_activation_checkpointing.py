"""The memory knob ``activation_checkpointing`` (off / selective / full) of every family's network.

Checkpointing changes what is kept for backward, never the values: outputs and all gradients are
equal in float64 in every mode; the saved activations shrink from off to selective to full; the
state dict and the hyper-parameter check are those of every other knob.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from nnunet_deconver.analysis.training_step_cost import saved_activation_bytes
from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.architectures.activation_checkpointing import CHECKPOINTING_MODES, StageSequence
from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers import DeformableTransposedConv

TOPOLOGY_3D = dict(input_channels=1, n_stages=4, features_per_stage=[4, 8, 8, 8], conv_op=nn.Conv3d,
                   kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 3, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                   num_classes=3)
PATCH_3D = (4, 16, 16)


def deconver(mode: str) -> nn.Module:
    return DeconverUNet(**TOPOLOGY_3D, deep_supervision=True, activation_checkpointing=mode)


def factorizer(mode: str) -> nn.Module:
    return FactorizerUNet(**TOPOLOGY_3D, deep_supervision=True, matricize="swin", head_dim=4, window=2,
                          patch_size=PATCH_3D, activation_checkpointing=mode)


def deconver_dtc(mode: str) -> nn.Module:
    return DeconverUNet(**TOPOLOGY_3D, deep_supervision=True, dtc={"receptive_field": 1.0},
                        activation_checkpointing=mode)


def plain_dtc(mode: str) -> nn.Module:
    return DTCPlainConvUNet(
        1, 4, [4, 8, 8, 8], nn.Conv3d, TOPOLOGY_3D["kernel_sizes"], TOPOLOGY_3D["strides"], [2] * 4, 3, [2] * 3,
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
        deep_supervision=True, dtc={"receptive_field": 1.0}, activation_checkpointing=mode,
    )


FAMILIES = {"deconver": deconver, "factorizer-swin": factorizer, "deconver-dtc": deconver_dtc, "plainconvunet-dtc": plain_dtc}


def _values(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    network.zero_grad(set_to_none=True)
    outputs = network(x)
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs).backward()
    return [*outputs, *(p.grad for p in network.parameters())]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_mode_gives_the_same_outputs_and_gradients(family: str) -> None:
    build: Callable[[str], nn.Module] = FAMILIES[family]
    torch.manual_seed(0)
    reference_network = build("off").double()
    x = torch.rand(2, 1, *PATCH_3D, dtype=torch.float64)
    reference = _values(reference_network, x)
    for mode in ("selective", "full"):
        network = build(mode).double()
        network.load_state_dict(reference_network.state_dict())
        for got, expected in zip(_values(network, x), reference, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_activations_shrink_from_off_to_selective_to_full(family: str) -> None:
    saved = {mode: saved_activation_bytes(lambda: FAMILIES[family](mode), (2, 1, *PATCH_3D))
             for mode in CHECKPOINTING_MODES}
    assert saved["off"] > saved["selective"] >= saved["full"] > 0
    if family != "plainconvunet-dtc":  # there only the DTC upsamplers are checkpointed
        assert saved["full"] < 0.5 * saved["off"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_state_dict_does_not_depend_on_the_mode(family: str) -> None:
    keys = {mode: {k: v.shape for k, v in FAMILIES[family](mode).state_dict().items()} for mode in CHECKPOINTING_MODES}
    assert keys["off"] == keys["selective"] == keys["full"]


def test_selective_checkpoints_the_two_highest_resolution_levels() -> None:
    network = deconver_dtc("selective")
    encoder = [stage.checkpointed for stage in network.encoder.stages]
    decoder = [stage.checkpointed for stage in network.decoder.stages]  # lowest resolution first
    upsamplers = [m.checkpointed for m in network.decoder.upsamplers]
    assert encoder == [True, True, False, False]
    assert decoder == [False, True, True] and upsamplers == [False, True, True]
    assert all(isinstance(stage, StageSequence) for stage in [*network.encoder.stages, *network.decoder.stages])


def test_inference_runs_the_blocks_as_they_are(monkeypatch) -> None:
    """No recomputation machinery without gradients (nnU-Net's validation and predictor)."""
    import nnunet_deconver.architectures.activation_checkpointing as module

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called without gradients")

    monkeypatch.setattr(module, "checkpoint", refuse)
    with torch.no_grad():
        deconver("full")(torch.rand(1, 1, *PATCH_3D))
    with pytest.raises(AssertionError, match="checkpoint called"):
        deconver("full")(torch.rand(1, 1, *PATCH_3D))


@pytest.mark.parametrize("build", [deconver, plain_dtc])
def test_an_unknown_mode_is_refused_in_one_line(build) -> None:
    with pytest.raises(ValueError, match=r"^activation_checkpointing='some' is invalid: must be one of 'off', "):
        build("some")


def test_dtc_layer_checkpointed_equals_plain() -> None:
    torch.manual_seed(1)
    plain = DeformableTransposedConv(4, 2, (2, 2)).double()
    checkpointed = DeformableTransposedConv(4, 2, (2, 2), checkpointed=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    for layer in (plain, checkpointed):
        out = layer(x)
        grads = torch.autograd.grad(out.square().sum(), (x, *layer.parameters()))
        if layer is plain:
            reference = (out, *grads)
    for got, expected in zip((out, *grads), reference, strict=True):
        torch.testing.assert_close(got, expected)
