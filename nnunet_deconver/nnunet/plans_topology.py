"""Read the network topology nnU-Net planned for a configuration.

nnU-Net's planner decides stages, widths, strides (possibly anisotropic, e.g. (1, 2, 2)) and
convolution kernel sizes per dataset; every architecture of this package is built from them so
that any planned dataset and patch size works without hand edits.
"""

from __future__ import annotations

import pydoc
from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides")


def plans_topology(configuration_manager: ConfigurationManager) -> dict[str, Any]:
    """Return the constructor arguments of :class:`UNetScaffold` that the plans define.

    Raises:
        ValueError: if the configuration's architecture lacks one of :data:`TOPOLOGY_KEYS` or names
            a convolution class that cannot be imported.
    """
    arch_kwargs = configuration_manager.network_arch_init_kwargs
    missing = [key for key in TOPOLOGY_KEYS if key not in arch_kwargs]
    if missing:
        raise ValueError(
            f"The plans configuration's 'architecture.arch_kwargs' lacks {missing}; re-run "
            f"nnUNetv2_plan_and_preprocess with nnU-Net >= 2.8.1 to get a complete plans file."
        )
    topology = {key: arch_kwargs[key] for key in TOPOLOGY_KEYS}
    conv_op = pydoc.locate(topology["conv_op"]) if isinstance(topology["conv_op"], str) else topology["conv_op"]
    if conv_op is None:
        raise ValueError(f"The plans name conv_op {topology['conv_op']!r}, which cannot be imported.")
    topology["conv_op"] = conv_op
    return topology
