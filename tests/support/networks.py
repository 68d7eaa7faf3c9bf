"""Network helpers of the DTC tests: nnU-Net's own build of a plans configuration and DTC's parameter budget."""

from __future__ import annotations

import math

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_deconver.layers.dtc import DeformableTransposedConv


def planned_network(config: ConfigurationManager, class_name: str | None = None, extra: dict | None = None,
                    deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's own build (get_network_from_plans, with nnU-Net's initialisation), 1 channel in, 3 classes."""
    return get_network_from_plans(class_name or config.network_arch_class_name,
                                  {**config.network_arch_init_kwargs, **(extra or {})},
                                  config.network_arch_init_kwargs_req_import, 1, 3, allow_init=True,
                                  deep_supervision=deep_supervision)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dtc_parameters(transposed: list[tuple[int, int, tuple[int, ...]]]) -> int:
    """What DTC adds per wrapped transposed conv (C_in -> C_out, stride s, d axes): the 1x1 conv
    (C_in C_out + C_out) and the coordinate branch (C_in 2d prod(s) + 2d)."""
    total = 0
    for c_in, c_out, stride in transposed:
        d = len(stride)
        total += c_in * c_out + c_out + c_in * 2 * d * math.prod(stride) + 2 * d
    return total


def transposed_convs(network: nn.Module) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(t.in_channels, t.out_channels, tuple(t.stride)) for t in network.decoder.transpconvs]


def dtcs(network: nn.Module) -> list[DeformableTransposedConv]:
    return [m for m in network.modules() if isinstance(m, DeformableTransposedConv)]
