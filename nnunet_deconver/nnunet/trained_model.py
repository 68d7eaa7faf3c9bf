"""Load a trained nnU-Net model folder and prepare one image for it, the way nnUNetv2_predict does.

For tools that look inside a trained network (NMF components, DTC sampling offsets): nnU-Net's
predictor rebuilds the network and reads the checkpoint, nnU-Net's preprocessor normalises and
resamples the image, and :func:`network_input` cuts the window the network sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn


@dataclass
class TrainedModel:
    """A network with one fold's weights, in eval mode, the plans it was trained with, and the nnU-Net
    predictor that built it (for sliding-window prediction with the same model)."""

    network: nn.Module
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    dataset_json: dict
    device: torch.device
    predictor: nnUNetPredictor


def load_trained_model(
    model_folder: Path, fold: int | str = 0, checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu"
) -> TrainedModel:
    """Rebuild and load ``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>`` for one fold.

    Raises:
        FileNotFoundError: no such checkpoint in the folder.
    """
    checkpoint = model_folder / f"fold_{fold}" / checkpoint_name
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist; give a trained model folder, its -f fold and -chk name.")
    predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,), checkpoint_name)
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    return TrainedModel(
        network.to(predictor.device).eval(),
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
        predictor.device,
        predictor,
    )


def preprocess_image(model: TrainedModel, image_files: Sequence[Path]) -> np.ndarray:
    """The image (one file per channel, as nnU-Net's _0000, _0001 ...) preprocessed like nnUNetv2_predict
    does: (channels, *spatial), 3-D spatial also for 2-D configurations."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(
        [str(f) for f in image_files], None, model.plans_manager, model.configuration_manager, model.dataset_json
    )
    return data


def network_input(data: np.ndarray, patch_size: Sequence[int], slice_index: int | None) -> tuple[torch.Tensor, int]:
    """(1, channels, *patch_size) window of ``data`` (channels, *spatial) and the position of the chosen
    slice in it.

    ``slice_index`` (default: the middle) indexes the first spatial axis: a 2-D configuration gets that
    slice (position 0 returned); a 3-D one gets the window centred on it as far as the image allows. The
    other axes are centred. Zero padding fills what the image does not cover.

    Raises:
        ValueError: the slice is outside the image.
    """
    index = data.shape[1] // 2 if slice_index is None else slice_index
    if not 0 <= index < data.shape[1]:
        raise ValueError(f"Slice {index} is outside the image's {data.shape[1]} slices (first axis).")
    if len(patch_size) == 2:
        data = data[:, index]
    centres = [index if len(patch_size) == 3 and axis == 0 else size // 2 for axis, size in enumerate(data.shape[1:])]
    window = np.zeros((data.shape[0], *patch_size), dtype=np.float32)
    source, target = [], []
    for size, patch, centre in zip(data.shape[1:], patch_size, centres):
        start = min(max(0, centre - patch // 2), max(0, size - patch))
        offset = max(0, (patch - size) // 2)
        length = min(size, patch)
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    window[(slice(None), *target)] = data[(slice(None), *source)]
    position = index - source[0].start + target[0].start if len(patch_size) == 3 else 0
    return torch.from_numpy(window)[None], position
