"""Inference-time NMF settings for trained Factorizers (papers/factorizer.md section 4.5).

A Factorizer trained with T = 5 HALS iterations of rank 1 can predict with fewer iterations, another
rank or solver, or with some NMF layers short-circuited, without retraining. ``nnunet-deconver
predict`` is ``nnUNetv2_predict`` plus these settings: it runs nnU-Net's own entry point (so every
nnUNetv2_predict option works the same) and changes the NMF layers right after nnU-Net has built the
network and before any prediction. The settings are attributes, not weights, so the checkpoints
nnU-Net loads per fold keep them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor, predict_entry_point
from torch import nn

from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers.nmf import Solver

SETTINGS_FILE = "nmf_inference_settings.json"


@dataclass(frozen=True)
class NMFInferenceSettings:
    """What to change in every NMF layer; ``None`` / empty keeps the trained setting."""

    iterations: int | None = None
    rank: int | None = None
    solver: Solver | None = None
    skip_layers: tuple[int, ...] = field(default_factory=tuple)

    @property
    def changes_anything(self) -> bool:
        return any(v is not None for v in (self.iterations, self.rank, self.solver)) or bool(self.skip_layers)

    def describe(self, network: FactorizerUNet) -> str:
        layers = network.nmf_layers()
        first = layers[0].nmf
        skipped = ", ".join(str(i) for i in self.skip_layers) or "none"
        return (
            f"NMF layers: {len(layers)} (1 = first encoder block, {len(layers)} = last decoder block); "
            f"T = {first.iterations}, rank = {first.rank}, solver = {first.solver}; short-circuited: {skipped}"
        )


def factorizer_in(network: nn.Module) -> FactorizerUNet | None:
    """The FactorizerUNet inside ``network`` (itself, or wrapped by torch.compile or DDP), if any."""
    return next((m for m in network.modules() if isinstance(m, FactorizerUNet)), None)


def apply_settings(network: nn.Module, settings: NMFInferenceSettings) -> FactorizerUNet | None:
    """Apply ``settings`` to the Factorizer in ``network``; return it (None if there is none and nothing changes).

    Raises:
        ValueError: settings given for a network without NMF layers, or invalid settings.
    """
    factorizer = factorizer_in(network)
    if factorizer is None:
        if settings.changes_anything:
            raise ValueError(
                f"The model's network ({type(network).__name__}) has no NMF layers; --nmf-* and --skip-nmf-layers "
                f"apply to Factorizer models (e.g. trained with -tr nnUNetTrainerFactorizerSwin)."
            )
        return None
    factorizer.configure_nmf(settings.iterations, settings.rank, settings.solver, settings.skip_layers)
    return factorizer


@contextlib.contextmanager
def settings_applied_on_initialization(settings: NMFInferenceSettings, output_folder: Path | None) -> Iterator[None]:
    """While active, every nnUNetPredictor applies ``settings`` when it initializes from a model folder,
    and (once they are known to fit the model) records them in ``output_folder``."""
    original = nnUNetPredictor.initialize_from_trained_model_folder

    def initialize_then_apply(predictor: nnUNetPredictor, *args, **kwargs) -> None:
        original(predictor, *args, **kwargs)
        factorizer = apply_settings(predictor.network, settings)
        if factorizer is not None:
            print(settings.describe(factorizer), flush=True)
        if output_folder is not None:
            record_settings(output_folder, settings)

    nnUNetPredictor.initialize_from_trained_model_folder = initialize_then_apply
    try:
        yield
    finally:
        nnUNetPredictor.initialize_from_trained_model_folder = original


def check_output_folder(output_folder: Path, continue_prediction: bool, settings: NMFInferenceSettings) -> None:
    """Refuse to overwrite predictions: an output folder with files needs --continue_prediction, and then
    the same NMF settings as the run that wrote it.

    Raises:
        FileExistsError: the folder holds files (or predictions made with other settings).
    """
    if not output_folder.is_dir() or not any(output_folder.iterdir()):
        return
    if not continue_prediction:
        raise FileExistsError(
            f"{output_folder} already holds files; choose a new -o (predictions made with other NMF settings "
            f"would be overwritten) or pass --continue_prediction to complete an interrupted run."
        )
    recorded = output_folder / SETTINGS_FILE
    previous = json.loads(recorded.read_text()) if recorded.is_file() else _as_json(NMFInferenceSettings())
    if previous != _as_json(settings):
        raise FileExistsError(
            f"{output_folder} was predicted with other NMF settings ({previous}); choose a new -o."
        )


def record_settings(output_folder: Path, settings: NMFInferenceSettings) -> None:
    """Write the settings next to the predictions they produced."""
    output_folder.mkdir(parents=True, exist_ok=True)
    (output_folder / SETTINGS_FILE).write_text(json.dumps(_as_json(settings), indent=2) + "\n")


def _as_json(settings: NMFInferenceSettings) -> dict:
    content = asdict(settings)
    content["skip_layers"] = list(settings.skip_layers)
    return content


def parse_skip_layers(values: Sequence[str]) -> tuple[int, ...]:
    """``--skip-nmf-layers 6 7 9`` or ``6,7,9`` or ranges ``6-9`` -> (6, 7, 8, 9) (1-based, sorted, unique)."""
    layers: set[int] = set()
    for value in values:
        for part in filter(None, value.split(",")):
            first, _, last = part.partition("-")
            try:
                layers.update(range(int(first), int(last or first) + 1))
            except ValueError as error:
                raise ValueError(f"--skip-nmf-layers takes layer numbers like 6 7 or 6,7 or 6-9, got {value!r}.") from error
    return tuple(sorted(layers))


def predict_with_settings(settings: NMFInferenceSettings, nnunet_arguments: Sequence[str]) -> None:
    """Run nnUNetv2_predict's own entry point on ``nnunet_arguments`` with ``settings`` applied to every model.

    The output folder (``-o``) is checked first: predictions there are never overwritten.

    Raises:
        FileExistsError: the output folder holds files and ``--continue_prediction`` was not given, or
            they were made with other settings.
    """
    passthrough = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    passthrough.add_argument("-o")
    passthrough.add_argument("--continue_prediction", action="store_true")
    output, _ = passthrough.parse_known_args(nnunet_arguments)
    output_folder = None if output.o is None else Path(output.o)
    if output_folder is not None:
        check_output_folder(output_folder, output.continue_prediction, settings)
    saved_argv = sys.argv
    sys.argv = ["nnUNetv2_predict", *nnunet_arguments]
    try:
        with settings_applied_on_initialization(settings, output_folder):
            predict_entry_point()
    finally:
        sys.argv = saved_argv
