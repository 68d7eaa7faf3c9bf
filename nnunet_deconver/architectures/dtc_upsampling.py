"""DTC for nnU-Net's own U-Nets (papers/dtc.md): registered wrappers of PlainConvUNet and ResidualEncoderUNet.

They take every argument of the network they wrap plus ``dtc`` (see :mod:`dtc_settings`); every
decoder transposed convolution is wrapped: it stays, with its weights and nnU-Net's initialisation,
as DTC's path (a), and the deformable path is added. The scaffold's networks take the same ``dtc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_deconver.architectures.activation_checkpointing import (
    DEFAULT_CHECKPOINTING,
    check_checkpointing_mode,
    checkpoints_level,
)
from nnunet_deconver.architectures.dtc_settings import check_dtc_settings
from nnunet_deconver.architectures.registry import register_architecture
from nnunet_deconver.layers.dtc import DeformableTransposedConv


def equip_decoder_with_dtc(decoder: nn.Module, settings: Mapping[str, Any], activation_checkpointing: str) -> None:
    """Wrap every transposed convolution of a dynamic_network_architectures UNetDecoder in DTC.

    With ``base_upsampling="linear"`` the transposed convolution is replaced by linear interpolation
    of a pointwise convolution instead of being kept. The DTCs of the levels ``activation_checkpointing``
    names (:mod:`activation_checkpointing`) keep only their input for backward: then the network saves
    what nnU-Net's own network saves.
    """
    check_checkpointing_mode(activation_checkpointing)
    checked = check_dtc_settings(settings)
    keep = checked.get("base_upsampling", "transposed") == "transposed"
    levels = len(decoder.transpconvs)
    for index, transposed in enumerate(decoder.transpconvs):
        decoder.transpconvs[index] = DeformableTransposedConv(
            transposed.in_channels, transposed.out_channels, tuple(transposed.stride),
            upsampling=transposed if keep else None, **checked,
            checkpointed=checkpoints_level(activation_checkpointing, levels - 1 - index),
        )


@register_architecture(wraps=PlainConvUNet)
class DTCPlainConvUNet(PlainConvUNet):
    """nnU-Net's PlainConvUNet (same arguments) whose decoder upsamples with DTC; ``dtc`` = DTC settings,
    ``activation_checkpointing`` = which DTCs recompute their activations in backward."""

    def __init__(
        self, *args: Any, dtc: Mapping[str, Any] | None = None,
        activation_checkpointing: str = DEFAULT_CHECKPOINTING, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        equip_decoder_with_dtc(self.decoder, dtc or {}, activation_checkpointing)


@register_architecture(wraps=ResidualEncoderUNet)
class DTCResidualEncoderUNet(ResidualEncoderUNet):
    """nnU-Net's ResidualEncoderUNet (ResEnc presets) whose decoder upsamples with DTC; ``dtc`` = DTC settings,
    ``activation_checkpointing`` = which DTCs recompute their activations in backward."""

    def __init__(
        self, *args: Any, dtc: Mapping[str, Any] | None = None,
        activation_checkpointing: str = DEFAULT_CHECKPOINTING, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        equip_decoder_with_dtc(self.decoder, dtc or {}, activation_checkpointing)
