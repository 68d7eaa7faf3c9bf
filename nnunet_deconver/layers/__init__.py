"""Pure PyTorch operators (no nnU-Net import), generic over 1-D, 2-D and 3-D inputs."""

from nnunet_deconver.layers.ndc import (
    NonnegativeDeconvolution,
    adjoint_filters,
    ndc_adjoint,
    ndc_forward_model,
    ndc_update,
)

__all__ = ["NonnegativeDeconvolution", "adjoint_filters", "ndc_adjoint", "ndc_forward_model", "ndc_update"]
