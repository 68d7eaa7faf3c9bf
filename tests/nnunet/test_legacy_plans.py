"""What version 0.1.0 wrote keeps working: its derived plans and its trainers' model folders.

``tests/fixtures/v0_1_0_networks.json`` was recorded with 0.1.0 (see record_v0_1_0_networks.py there):
the ``architecture`` entries its ``nnunet-deconver plan`` wrote, and the parameter/buffer names and
shapes of the networks it built. A checkpoint loads strictly only into a network with exactly those.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.nnunet.trainers import trainer_classes
from support.signatures import network_signature

RECORD = json.loads((Path(__file__).parents[1] / "fixtures" / "v0_1_0_networks.json").read_text())


@pytest.mark.parametrize("record", RECORD["presets"], ids=lambda r: f"{r['preset']}-{r['plans']}-{r['configuration']}")
def test_plans_written_by_0_1_0_build_the_same_network(record: dict) -> None:
    """nnU-Net's stock trainer (and its predictor) on a 0.1.0 derived plans file: same tensors."""
    plans = copy.deepcopy(RECORD["source_plans"][record["plans"]])
    plans["configurations"][record["configuration"]]["architecture"] = record["architecture"]
    manager = PlansManager(plans)
    with torch.device("meta"):
        network = nnUNetTrainer.build_network_architecture(
            manager, manager.get_configuration(record["configuration"]), 1, 3, True)
    assert network_signature(network) == record["network"]


@pytest.mark.parametrize("record", RECORD["trainers"], ids=lambda r: f"{r['trainer']}-{r['plans']}-{r['configuration']}")
def test_model_folders_of_0_1_0_trainers_rebuild_the_same_network(record: dict) -> None:
    """Every 0.1.0 trainer still exists and builds, on nnU-Net's plans, a network its checkpoints load into."""
    manager = PlansManager(copy.deepcopy(RECORD["source_plans"][record["plans"]]))
    trainer = trainer_classes()[record["trainer"]]
    with torch.device("meta"):
        network = trainer.build_network_architecture(manager, manager.get_configuration(record["configuration"]), 1, 3, True)
    assert network_signature(network) == record["network"]
