"""Pure PyTorch operators (no nnU-Net import): NDC (1-D/2-D/3-D), NMF and Matricize, DTC (2-D/3-D)."""

from nnunet_deconver.layers.channel_layer_norm import ChannelLayerNorm
from nnunet_deconver.layers.dtc import DeformableTransposedConv
from nnunet_deconver.layers.matricize import Matricized, Matricizer

from nnunet_deconver.layers.ndc import NonnegativeDeconvolution
from nnunet_deconver.layers.ndc_lean import LeanNDCUpdate, ndc_strategy, ndc_update_lean
from nnunet_deconver.layers.ndc_layer_op import LeanNDCLayer, ndc_layer
from nnunet_deconver.layers.ndc_operators import adjoint_filters, ndc_adjoint, ndc_forward_model, ndc_update
from nnunet_deconver.layers.nmf import NMF, nmf
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding

__all__ = [
    "NMF",
    "ChannelLayerNorm",
    "DeformableTransposedConv",
    "LeanNDCLayer",
    "LeanNDCUpdate",
    "Matricized",
    "Matricizer",
    "PositionalEmbedding",
    "nmf",
    "NonnegativeDeconvolution",
    "adjoint_filters",
    "ndc_adjoint",
    "ndc_forward_model",
    "ndc_layer",
    "ndc_strategy",
    "ndc_update",
    "ndc_update_lean",
]
