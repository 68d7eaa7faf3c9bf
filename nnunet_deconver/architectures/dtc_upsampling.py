"""DTC in every decoder: the scaffold's upsampler factory and nnU-Net's own U-Nets (papers/dtc.md).

A network takes DTC as one JSON-friendly mapping of :class:`DeformableTransposedConv` settings, e.g.
``{"receptive_field": 2, "base_upsampling": "linear"}`` (``{}`` = the defaults). nnU-Net's
PlainConvUNet and ResidualEncoderUNet get every decoder transposed convolution wrapped: it stays,
with its weights and nnU-Net's initialisation, as DTC's path (a), and the deformable path is added.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_deconver.architectures.registry import register_architecture
from nnunet_deconver.architectures.unet_scaffold import UpsamplerFactory
from nnunet_deconver.layers.dtc import DeformableTransposedConv

DTC_SETTINGS: frozenset[str] = frozenset(inspect.signature(DeformableTransposedConv.__init__).parameters) - {
    "self", "in_channels", "out_channels", "stride", "upsampling"
}


def check_dtc_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as a dict, after refusing names DTC does not know (one-line ValueError)."""
    unknown = sorted(set(settings) - DTC_SETTINGS)
    if unknown:
        raise ValueError(f"Unknown DTC setting(s) {unknown} in 'dtc'; valid ones are {sorted(DTC_SETTINGS)}, e.g. {{\"receptive_field\": 2.0}}.")
    return dict(settings)


def dtc_upsampler_factory(settings: Mapping[str, Any]) -> UpsamplerFactory:
    """Upsampler factory for :class:`UNetScaffold` that builds DTC modules with ``settings``."""
    checked = check_dtc_settings(settings)

    def factory(in_channels: int, out_channels: int, stride: tuple[int, ...]) -> nn.Module:
        return DeformableTransposedConv(in_channels, out_channels, stride, **checked)

    return factory


def equip_decoder_with_dtc(decoder: nn.Module, settings: Mapping[str, Any]) -> None:
    """Wrap every transposed convolution of a dynamic_network_architectures UNetDecoder in DTC.

    With ``base_upsampling="linear"`` the transposed convolution is replaced by linear interpolation
    of a pointwise convolution instead of being kept.
    """
    checked = check_dtc_settings(settings)
    keep = checked.get("base_upsampling", "transposed") == "transposed"
    for index, transposed in enumerate(decoder.transpconvs):
        decoder.transpconvs[index] = DeformableTransposedConv(
            transposed.in_channels, transposed.out_channels, tuple(transposed.stride),
            upsampling=transposed if keep else None, **checked,
        )


@register_architecture(wraps=PlainConvUNet)
class DTCPlainConvUNet(PlainConvUNet):
    """nnU-Net's PlainConvUNet (same arguments) whose decoder upsamples with DTC; ``dtc`` = DTC settings."""

    def __init__(self, *args: Any, dtc: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        equip_decoder_with_dtc(self.decoder, dtc or {})


@register_architecture(wraps=ResidualEncoderUNet)
class DTCResidualEncoderUNet(ResidualEncoderUNet):
    """nnU-Net's ResidualEncoderUNet (ResEnc presets) whose decoder upsamples with DTC; ``dtc`` = DTC settings."""

    def __init__(self, *args: Any, dtc: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        equip_decoder_with_dtc(self.decoder, dtc or {})
