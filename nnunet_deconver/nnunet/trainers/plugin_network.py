"""What every trainer of the package shares: build a plugin network from the plans or from defaults."""

from __future__ import annotations

from typing import Any, ClassVar

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_deconver.nnunet.architecture_registry import (
    PLANS_CONFIGURATION_ARGUMENTS,
    is_plugin_architecture,
    validate_architecture,
)
from nnunet_deconver.nnunet.plans_topology import plans_topology


class nnUNetTrainerPluginNetwork(nnUNetTrainer):
    """nnU-Net's training recipe with one of the package's networks.

    With nnU-Net's plans the network is :meth:`default_network` on the planned topology. With a
    derived plans file (``nnunet-deconver plan``, ``-p nnUNetDeconverPlans``) that names one of the
    package's architectures, the network is the one the plans prescribe; it must be of
    :attr:`network_class` (train other plans with ``nnUNetTrainer`` or the matching trainer).
    """

    network_class: ClassVar[type[nn.Module]]

    @classmethod
    def default_network(
        cls, topology: dict[str, Any], configuration_manager: ConfigurationManager
    ) -> dict[str, Any]:
        """Keyword arguments of :attr:`network_class` beyond the topology for nnU-Net's own plans."""
        raise NotImplementedError

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        """Refuse plans that contradict what the trainer's name promises (override in variants)."""

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        class_name = configuration_manager.network_arch_class_name
        topology = plans_topology(configuration_manager)
        if is_plugin_architecture(class_name):
            arch_kwargs = dict(configuration_manager.network_arch_init_kwargs)
            network_class = validate_architecture(class_name, arch_kwargs)
            if network_class is not cls.network_class:
                raise ValueError(
                    f"The plans prescribe {network_class.__name__} but {cls.__name__} trains "
                    f"{cls.network_class.__name__}; train these plans with nnUNetTrainer (it follows the plans)."
                )
            cls.check_planned_architecture(arch_kwargs)
            arch_kwargs["conv_op"] = topology["conv_op"]
        else:
            network_class = cls.network_class
            arch_kwargs = {**topology, **cls.default_network(topology, configuration_manager)}
        for name in PLANS_CONFIGURATION_ARGUMENTS.get(network_class, ()):
            arch_kwargs.setdefault(name, list(getattr(configuration_manager, name)))
        return network_class(
            input_channels=num_input_channels,
            num_classes=num_output_channels,
            deep_supervision=enable_deep_supervision,
            **arch_kwargs,
        )
