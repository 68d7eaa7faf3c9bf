"""DTC as a decoder option (papers/dtc.md): the settings a network's ``dtc`` argument may hold.

``dtc`` is one JSON-friendly mapping of :class:`DeformableTransposedConv` settings, e.g.
``{"receptive_field": 2, "base_upsampling": "linear"}`` (``{}`` = the paper's defaults). The
scaffold's networks and the DTC wrappers of nnU-Net's networks read it through this module only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from nnunet_deconver.layers.dtc import DeformableTransposedConv

DTC_SETTINGS: frozenset[str] = frozenset(inspect.signature(DeformableTransposedConv.__init__).parameters) - {
    "self", "in_channels", "out_channels", "stride", "upsampling"
}

UpsamplerFactory = Callable[[int, int, tuple[int, ...]], nn.Module]
"""Builds a decoder upsampler from (in channels, out channels, stride)."""


def check_dtc_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as a dict, after refusing names DTC does not know (one-line ValueError)."""
    unknown = sorted(set(settings) - DTC_SETTINGS)
    if unknown:
        raise ValueError(
            f"Unknown DTC setting(s) {unknown} in 'dtc'; valid ones are {sorted(DTC_SETTINGS)}, "
            f'e.g. {{"receptive_field": 2.0}}.'
        )
    return dict(settings)


def dtc_upsampler_factory(settings: Mapping[str, Any]) -> UpsamplerFactory:
    """Upsampler factory that builds DTC modules with ``settings``."""
    checked = check_dtc_settings(settings)

    def factory(in_channels: int, out_channels: int, stride: tuple[int, ...]) -> nn.Module:
        return DeformableTransposedConv(in_channels, out_channels, stride, **checked)

    return factory
