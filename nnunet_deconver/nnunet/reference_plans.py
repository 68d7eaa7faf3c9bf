"""nnU-Net-like plans at realistic sizes, for measuring memory, launches and speed where users train.

What ``nnUNetv2_plan_and_preprocess`` plans for a typical isotropic dataset on a ~10 GB GPU: 3d_fullres
with 6 stages of 32-320 features and a 128^3 patch, batch 2; 2d with 8 stages of 32-512 features and a
512^2 patch, batch 12; each as nnUNetPlans (PlainConvUNet, 2 convolutions per stage) or as the ResEnc M
plans (ResidualEncoderUNet, 1-3-4-6-6-6... blocks). The profiling tools and the GPU benchmark build every
trainer's network from these through the trainer's own ``build_network_architecture``.
"""

from __future__ import annotations

from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)

REFERENCE_CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "3d_fullres": {"patch_size": [128, 128, 128], "batch_size": 2, "features": [32, 64, 128, 256, 320, 320]},
    "2d": {"patch_size": [512, 512], "batch_size": 12, "features": [32, 64, 128, 256, 512, 512, 512, 512]},
}


def reference_configuration(name: str, *, resenc: bool = False) -> dict[str, Any]:
    """The plans configuration ``name`` ('3d_fullres' or '2d') as nnU-Net writes it (ResEnc plans if ``resenc``)."""
    reference = REFERENCE_CONFIGURATIONS[name]
    spatial_dims = len(reference["patch_size"])
    n_stages = len(reference["features"])
    per_stage = ({"n_blocks_per_stage": list(_RESENC_BLOCKS[:n_stages])} if resenc
                 else {"n_conv_per_stage": [2] * n_stages})
    arch_kwargs = {
        "n_stages": n_stages, "features_per_stage": list(reference["features"]),
        "conv_op": f"torch.nn.modules.conv.Conv{spatial_dims}d", "kernel_sizes": [[3] * spatial_dims] * n_stages,
        "strides": [[1] * spatial_dims] + [[2] * spatial_dims] * (n_stages - 1), **per_stage,
        "n_conv_per_stage_decoder": [1 if resenc else 2] * (n_stages - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{spatial_dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {
        "data_identifier": f"nnUNetPlans_{name}", "patch_size": list(reference["patch_size"]),
        "batch_size": reference["batch_size"],
        "architecture": {"network_class_name": RESENC_UNET if resenc else PLAIN_UNET, "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }


def reference_plans_manager(*, resenc: bool = False) -> PlansManager:
    """A PlansManager holding both reference configurations (nnUNetPlans, or nnUNetResEncUNetMPlans)."""
    return PlansManager({
        "dataset_name": "Dataset000_Reference",
        "plans_name": "nnUNetResEncUNetMPlans" if resenc else "nnUNetPlans",
        "configurations": {name: reference_configuration(name, resenc=resenc) for name in REFERENCE_CONFIGURATIONS},
    })
