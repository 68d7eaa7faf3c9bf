"""The Deconv Mixer under fp16 autocast: the NDC's float32 output never passes through fp16 (eq. 6-7)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_deconver.blocks.deconv_mixer import DeconvMixer
from nnunet_deconver.layers.compute import to_autocast_dtype


def test_sources_beyond_fp16_range_give_a_finite_output_equal_to_float32() -> None:
    torch.manual_seed(0)
    mixer = DeconvMixer(4, nn.Conv2d, kernel_size=3, ratio=4)
    with torch.no_grad():
        mixer.ndc.weight.mul_(0.001)  # S1 ~ X / V: small filters put the sources far beyond fp16's 65504
    x = 300.0 * torch.rand(1, 4, 12, 10)
    sources = mixer.ndc(mixer.activation(mixer.project_in(x)))
    assert sources.abs().max() > 4 * torch.finfo(torch.float16).max
    reference = mixer(x)
    with torch.autocast("cpu", dtype=torch.float16):
        out = mixer(x)
    assert torch.isfinite(out).all()
    assert out.dtype == torch.float16  # back in the autocast stream
    # fp16 round-off of the input projection and of the result (about 1e-3 relative) remains
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2 * reference.abs().max().item())


def test_a_result_beyond_fp16_range_is_bounded_not_infinite() -> None:
    with torch.autocast("cpu", dtype=torch.float16):
        bounded = to_autocast_dtype(torch.tensor([1e6, -1e6, 3.0]))
    assert bounded.dtype == torch.float16 and bounded.tolist() == [65504.0, -65504.0, 3.0]
    assert to_autocast_dtype(torch.tensor([1e6])).dtype == torch.float32  # no autocast: unchanged
