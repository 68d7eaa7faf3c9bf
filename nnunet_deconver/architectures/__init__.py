"""Whole networks, constructed like dynamic_network_architectures' so nnU-Net plans can build them."""

from nnunet_deconver.architectures.deconver_unet import DeconverUNet
from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet, DTCResidualEncoderUNet
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.architectures.unet_scaffold import StageSpec, UNetScaffold

__all__ = ["DTCPlainConvUNet", "DTCResidualEncoderUNet", "DeconverUNet", "FactorizerUNet", "StageSpec", "UNetScaffold"]
