"""What every trainer of the package shares: which network it trains, checked before anything is written.

A trainer names its network by a plans ``architecture`` entry -- the one a derived plans file
prescribes (``nnunet-deconver plan``, ``-p nnUNetDeconverPlans``), or :meth:`default_architecture`
on nnU-Net's own plans -- and builds it by the package's single path
(:func:`~nnunet_deconver.nnunet.network_from_plans.build_network`). The same entry is validated on
the meta device when the trainer is created, before nnU-Net makes its output folder.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_deconver.architectures.registry import architecture_entry, class_path
from nnunet_deconver.nnunet.network_from_plans import Architecture, build_network, validate_architecture
from nnunet_deconver.nnunet.plans_topology import TOPOLOGY_KEYS, plans_topology


def planned_architecture(configuration_manager: ConfigurationManager) -> Architecture:
    """The plans configuration's ``architecture`` entry, as a new dict."""
    return {
        "network_class_name": configuration_manager.network_arch_class_name,
        "arch_kwargs": dict(configuration_manager.network_arch_init_kwargs),
        "_kw_requires_import": list(configuration_manager.network_arch_init_kwargs_req_import),
    }


class nnUNetTrainerPluginNetwork(nnUNetTrainer):
    """nnU-Net's training recipe with one of the package's networks.

    With nnU-Net's plans the network is :meth:`default_architecture`: :attr:`network_class` on the
    planned topology with :meth:`default_network`'s hyper-parameters. With a derived plans file that
    names one of the package's architectures, the network is the one the plans prescribe; it must be
    of :attr:`network_class` (train other plans with ``nnUNetTrainer`` or the matching trainer).
    """

    network_class: ClassVar[type[nn.Module] | None]
    shared_base: ClassVar[bool] = True  # not a trainer to run: trainer_classes() leaves it out (own attribute only)
    activation_checkpointing: ClassVar[str | None] = None
    """'off', 'selective' or 'full' to override the network's memory mode (None: the plans' or the default,
    see :mod:`~nnunet_deconver.architectures.activation_checkpointing`); it changes memory and time, not results."""

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        validate_architecture(
            self.network_architecture(configuration_manager), configuration_manager.configuration,
            f"{type(self).__name__} cannot train configuration {configuration!r} of plans "
            f"{plans.get('plans_name', '?')!r}",
        )
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def default_network(cls, topology: dict[str, Any], configuration_manager: ConfigurationManager) -> dict[str, Any]:
        """Keyword arguments of :attr:`network_class` beyond the topology for nnU-Net's own plans."""
        return {}

    @classmethod
    def default_architecture(cls, planned: Architecture, configuration_manager: ConfigurationManager) -> Architecture:
        """The architecture entry this trainer trains on plans that name none of the package's networks."""
        topology = plans_topology(configuration_manager)  # refuses incomplete plans with one line
        assert cls.network_class is not None
        return {
            "network_class_name": class_path(cls.network_class),
            "arch_kwargs": {
                **{key: planned["arch_kwargs"][key] for key in TOPOLOGY_KEYS},
                **cls.default_network(topology, configuration_manager),
            },
            "_kw_requires_import": ["conv_op"],
        }

    @classmethod
    def check_planned_architecture(cls, arch_kwargs: dict[str, Any]) -> None:
        """Refuse plans that contradict what the trainer's name promises (override in variants)."""

    @classmethod
    def plans_mismatch_hint(cls) -> str:
        return "train these plans with nnUNetTrainer (it follows the plans)"

    @classmethod
    def network_architecture(cls, configuration_manager: ConfigurationManager) -> Architecture:
        """The architecture entry this trainer builds for a plans configuration.

        Raises:
            ValueError: the plans prescribe another of the package's networks than this trainer's.
        """
        planned = planned_architecture(configuration_manager)
        entry = architecture_entry(planned["network_class_name"])
        if entry is None:
            architecture = cls.default_architecture(planned, configuration_manager)
        elif entry.cls is not cls.network_class:
            trains = cls.network_class.__name__ if cls.network_class is not None else "nnU-Net's planned network"
            raise ValueError(
                f"The plans prescribe {entry.cls.__name__} but {cls.__name__} trains {trains}; "
                f"{cls.plans_mismatch_hint()}."
            )
        else:
            cls.check_planned_architecture(planned["arch_kwargs"])
            architecture = planned
        if cls.activation_checkpointing is not None:
            architecture["arch_kwargs"]["activation_checkpointing"] = cls.activation_checkpointing
        return architecture

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        return build_network(
            cls.network_architecture(configuration_manager), num_input_channels, num_output_channels,
            enable_deep_supervision, configuration_manager.configuration,
        )
