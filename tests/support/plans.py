"""Plans fabricated in the shapes nnUNetv2_plan_and_preprocess writes: one builder for every test tier."""

from __future__ import annotations

from collections.abc import Sequence

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
DECONVER_UNET = "nnunet_deconver.architectures.deconver_unet.DeconverUNet"
FACTORIZER_UNET = "nnunet_deconver.architectures.factorizer_unet.FactorizerUNet"
DTC_PLAIN_UNET = "nnunet_deconver.architectures.dtc_upsampling.DTCPlainConvUNet"


def _anisotropic_topology(spatial_dims: int, n_stages: int) -> tuple[list, list]:
    """Kernels and strides as nnU-Net plans them: in 3-D (1, 3, 3) / (1, 2, 2) on the thick-slice axis first."""
    if spatial_dims == 2:
        return [[3, 3]] * n_stages, [[1, 1]] + [[2, 2]] * (n_stages - 1)
    kernels = [[1, 3, 3]] + [[3, 3, 3]] * (n_stages - 1)
    strides = [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n_stages - 2)
    return kernels, strides[:n_stages]


def plans_configuration(
    spatial_dims: int,
    *,
    features: Sequence[int] = (8, 16, 32),
    patch: Sequence[int] | None = None,
    network: str = PLAIN_UNET,
    convs_per_stage: int = 2,
    resenc_blocks: Sequence[int] = (1, 3, 4, 6, 6, 6),
) -> dict:
    """A plans configuration with nnU-Net's PlainConvUNet (or ResEnc) architecture entry, anisotropic in 3-D.

    Default patch: (8, 16, 16) in 3-D, (16, 24) in 2-D; divisible by the strides of up to 3 stages.
    """
    n_stages = len(features)
    kernels, strides = _anisotropic_topology(spatial_dims, n_stages)
    patch = list(patch) if patch is not None else ([8, 16, 16] if spatial_dims == 3 else [16, 24])
    per_stage = ({"n_conv_per_stage": [convs_per_stage] * n_stages} if network == PLAIN_UNET
                 else {"n_blocks_per_stage": list(resenc_blocks)[:n_stages]})
    arch_kwargs = {
        "n_stages": n_stages, "features_per_stage": list(features), "conv_op": f"torch.nn.modules.conv.Conv{spatial_dims}d",
        "kernel_sizes": kernels, "strides": strides, **per_stage,
        "n_conv_per_stage_decoder": [convs_per_stage] * (n_stages - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{spatial_dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {
        "data_identifier": f"nnUNetPlans_{spatial_dims}d", "patch_size": patch, "batch_size": 2,
        "architecture": {"network_class_name": network, "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }


def configuration_manager(spatial_dims: int, **options) -> ConfigurationManager:
    """:func:`plans_configuration` wrapped as nnU-Net's ConfigurationManager."""
    return ConfigurationManager(plans_configuration(spatial_dims, **options))


def narrow_configuration(spatial_dims: int, network: str = PLAIN_UNET) -> ConfigurationManager:
    """Tiny plans for whole-network tests: widths 4-16, one convolution per stage (one block in ResEnc)."""
    patch = [4, 16, 16] if spatial_dims == 3 else [16, 20]
    return configuration_manager(spatial_dims, features=(4, 8, 16), patch=patch, network=network, convs_per_stage=1,
                                 resenc_blocks=(1, 1, 1))


def nnunet_plans(network: str = PLAIN_UNET) -> dict:
    """A plans dict like nnUNetv2_plan_and_preprocess writes: 2d (5 stages), 3d_fullres (4), an inheriting cascade."""
    widths = (32, 64, 128, 256, 320)
    return {
        "dataset_name": "Dataset999_Toy",
        "plans_name": "nnUNetPlans" if network == PLAIN_UNET else "nnUNetResEncUNetMPlans",
        "configurations": {
            "2d": plans_configuration(2, features=widths, patch=[64, 64], network=network),
            "3d_fullres": plans_configuration(3, features=widths[:4], patch=[16, 32, 32], network=network),
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
    }


def resenc_plans() -> dict:
    """:func:`nnunet_plans` as nnUNetPlannerResEncM writes them: ResidualEncoderUNet with blocks per stage."""
    return nnunet_plans(RESENC_UNET)


def predictor_plans(configuration: dict, dataset_name: str = "Dataset999_Toy") -> dict:
    """A complete plans.json around one 3d_fullres configuration, with what nnU-Net's predictor reads."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    spacing = [3.0, 1.0, 1.0]
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": configuration["patch_size"],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            **configuration, "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "median_image_size_in_voxels": configuration["patch_size"], "spacing": spacing,
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1}, "batch_dice": False,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 4.0, "mean": 0.0, "median": 0.0, "min": -4.0, "percentile_00_5": -2.5, "percentile_99_5": 2.5,
            "std": 1.0}},
    }
