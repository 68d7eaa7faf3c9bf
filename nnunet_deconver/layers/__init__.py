"""Pure PyTorch operators (no nnU-Net import), generic over 1-D, 2-D and 3-D inputs."""

from nnunet_deconver.layers.ndc import (
    NonnegativeDeconvolution,
    adjoint_filters,
    ndc_adjoint,
    ndc_forward_model,
    ndc_update,
)
from nnunet_deconver.layers.ndc_function import NDCUpdateFunction, ndc_update_lean

__all__ = [
    "NDCUpdateFunction",
    "NonnegativeDeconvolution",
    "adjoint_filters",
    "ndc_adjoint",
    "ndc_forward_model",
    "ndc_update",
    "ndc_update_lean",
]
