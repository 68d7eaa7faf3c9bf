"""Compositions of layers: the building blocks the U-shaped networks are made of."""

from nnunet_deconver.blocks.deconv_mixer import DeconvMixer
from nnunet_deconver.blocks.deconver_block import DeconverBlock
from nnunet_deconver.blocks.mlp import PointwiseMLP

__all__ = ["DeconvMixer", "DeconverBlock", "PointwiseMLP"]
