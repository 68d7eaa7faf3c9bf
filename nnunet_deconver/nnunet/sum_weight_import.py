"""Install the authors' released 2-D SUM weights as an nnU-Net model folder (``nnunet-deconver import-sum-weights``).

The plans configuration must build the paper's SUM (derive plans with the ``sum-paper-2d`` preset:
``nnunet-deconver plan -d D --preset sum-paper-2d -o nnUNetSUMPaperPlans``) for a binary dataset with one
input channel. The result is ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_all``
with a checkpoint nnU-Net's predictor reads, so ``nnUNetv2_predict -f all`` and ``nnunet-deconver impulse
-f all`` use the authors' network. The released models saw images scaled to [0, 1]: plan the dataset with
nnU-Net's ``RescaleTo01Normalization`` for faithful predictions (the impulse response of the linear ED
does not depend on it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_deconver.architectures.sum_authors_weights import load_authors_weights
from nnunet_deconver.architectures.sum_network import SUMNet

PAPER_TRAINER = "nnUNetTrainerSUM_paper"
HORIZONTAL_FLIPS = (1,)  # the paper's only flips, used as nnU-Net's test-time mirroring in 2-D


def _trainer_class(name: str) -> type:
    from nnunet_deconver.nnunet.trainers import trainer_classes

    trainer = trainer_classes().get(name) or recursive_find_trainer_class_by_name(name)
    if trainer is None:
        raise ValueError(f"Unknown trainer {name!r}; use {PAPER_TRAINER} or nnUNetTrainerSUM.")
    return trainer


def install_authors_weights(weights: Path, dataset: str, plans_name: str, *, configuration: str = "2d",
                            trainer_name: str = PAPER_TRAINER) -> Path:
    """Write the model folder with the authors' weights in fold ``all``; returns the checkpoint's path.

    Raises:
        FileNotFoundError: the weights, plans or dataset.json are missing.
        FileExistsError: the checkpoint exists already (never replaced).
        ValueError: the configuration does not build the paper's SUM, or the weights do not fit it.
    """
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights} does not exist; give the path of the authors' SUM weights file.")
    dataset_name = maybe_convert_to_dataset_name(dataset)
    preprocessed = Path(nnUNet_preprocessed) / dataset_name
    plans_file = preprocessed / f"{plans_name}.json"
    for required in (plans_file, preprocessed / "dataset.json"):
        if not Path(required).is_file():
            raise FileNotFoundError(f"{required} does not exist; run nnUNetv2_plan_and_preprocess and "
                                    f"`nnunet-deconver plan -d {dataset} --preset sum-paper-2d -o {plans_name}` first.")
    plans, dataset_json = load_json(str(plans_file)), load_json(str(preprocessed / "dataset.json"))
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    model_folder = Path(nnUNet_results) / dataset_name / f"{trainer_name}__{plans_name}__{configuration}"
    checkpoint_path = model_folder / "fold_all" / "checkpoint_final.pth"
    if checkpoint_path.exists():
        raise FileExistsError(f"{checkpoint_path} exists already; it is never replaced (move it away first).")
    if (model_folder / "plans.json").is_file() and load_json(str(model_folder / "plans.json")) != plans:
        raise ValueError(f"{model_folder} holds models of other {plans_name} plans; choose another -p name.")
    network = _trainer_class(trainer_name).build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, False,
    )
    if not isinstance(network, SUMNet):
        raise ValueError(f"Configuration {configuration!r} of {plans_name} builds {type(network).__name__}, not a SUM; "
                         f"derive plans with the sum-paper-2d preset.")
    load_authors_weights(network, weights)
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "network_weights": network.state_dict(),
        "trainer_name": trainer_name,
        "init_args": {"plans": plans, "configuration": configuration, "fold": "all", "dataset_json": dataset_json,
                      "device": "cpu"},
        "inference_allowed_mirroring_axes": HORIZONTAL_FLIPS,
        "current_epoch": 0,
        "imported_from": str(weights),
    }, checkpoint_path)
    for name in ("dataset.json", "dataset_fingerprint.json"):
        if (preprocessed / name).is_file() and not (model_folder / name).exists():
            shutil.copy(preprocessed / name, model_folder / name)
    if not (model_folder / "plans.json").exists():
        shutil.copy(plans_file, model_folder / "plans.json")
    return checkpoint_path
