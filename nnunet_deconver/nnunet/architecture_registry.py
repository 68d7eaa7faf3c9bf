"""The architectures a plans file may name, and the validation of what it says about them.

A derived plans file (``nnunet-deconver plan``) names one of these classes in
``architecture.network_class_name`` with its hyper-parameters in ``arch_kwargs``; nnU-Net's stock
trainer and ours then build it. Unknown classes and hyper-parameters are refused with one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from nnunet_deconver.architectures.deconver_unet import DeconverUNet
from nnunet_deconver.architectures.dtc_upsampling import DTCPlainConvUNet, DTCResidualEncoderUNet, check_dtc_settings
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (DeconverUNet, FactorizerUNet, DTCPlainConvUNet, DTCResidualEncoderUNet)
}
# Hyper-parameters read from the plans configuration itself (not from its arch_kwargs): a trainer or
# a derived plans file fills them in, e.g. the patch size that sizes the Factorizer's positional embedding.
PLANS_CONFIGURATION_ARGUMENTS: dict[type[nn.Module], tuple[str, ...]] = {FactorizerUNet: ("patch_size",)}
# Supplied by nnU-Net's get_network_from_plans / our trainers, never by a plans file.
BUILD_TIME_ARGUMENTS = frozenset({"input_channels", "num_classes", "deep_supervision"})


def is_plugin_architecture(network_class_name: str) -> bool:
    return network_class_name in ARCHITECTURES


def accepted_arguments(cls: type[nn.Module]) -> set[str]:
    """Hyper-parameters a plans file may give ``cls``; a wrapper of an nnU-Net network (DTC) accepts
    the wrapped network's arguments plus its own."""
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    wrapped = getattr(cls, "wrapped_architecture", None)
    if wrapped is not None:
        own |= set(inspect.signature(wrapped.__init__).parameters) - {"self"}
    return own - BUILD_TIME_ARGUMENTS


def validate_architecture(network_class_name: str, arch_kwargs: Mapping[str, Any]) -> type[nn.Module]:
    """Return the class a plans file names, after checking its hyper-parameter names.

    Raises:
        ValueError: one line naming the unknown class, hyper-parameter or DTC setting and what is allowed.
    """
    cls = ARCHITECTURES.get(network_class_name)
    if cls is None:
        raise ValueError(
            f"Unknown architecture class {network_class_name!r}; nnunet-deconver provides {sorted(ARCHITECTURES)}."
        )
    accepted = accepted_arguments(cls)
    unknown = sorted(set(arch_kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for {cls.__name__}; valid ones are {sorted(accepted)}."
        )
    if arch_kwargs.get("dtc") is not None:
        check_dtc_settings(arch_kwargs["dtc"])
    return cls
