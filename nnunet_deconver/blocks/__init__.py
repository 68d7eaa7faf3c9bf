"""Compositions of layers: the building blocks the U-shaped networks are made of."""

from nnunet_deconver.blocks.deconv_mixer import DeconvMixer
from nnunet_deconver.blocks.deconver_block import DeconverBlock
from nnunet_deconver.blocks.factorizer_block import FactorizerBlock
from nnunet_deconver.blocks.mlp import PointwiseMLP
from nnunet_deconver.blocks.wrapped_nmf import WrappedNMF

__all__ = ["DeconvMixer", "DeconverBlock", "FactorizerBlock", "PointwiseMLP", "WrappedNMF"]
