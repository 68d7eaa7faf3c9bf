"""``nnunet-deconver robustness``: the SUM paper's Table 2 (test-time blur and noise) for any nnU-Net model.

Paper: ``../shared/papers/segmentation-cnns-are-denoising-models.md``, Appendix E; the corruptions are
:mod:`nnunet_deconver.analysis.corruptions`. For every trainer (one model folder
``nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>`` each, one fold) and every corruption:

1. each case is read with the plans' reader (the class nnU-Net preprocesses and exports with), corrupted on
   its raw intensities, preprocessed by the configuration's preprocessor (``run_case_npy``: transpose, crop
   to the nonzero region, normalise, resample, as nnUNetv2_predict's workers do, but here in this process and
   one case at a time, so one image is in memory; the crop and the nonzero mask see the corrupted image) and
   predicted by nnU-Net's ``nnUNetPredictor`` with nnUNetv2_predict's settings (sliding window, step 0.5,
   Gaussian weighting, mirroring), whose export workers resample the segmentations and write them with the
   plans' writer to ``<output>/<trainer>/<corruption>/``;
2. nnU-Net's evaluator (``compute_metrics_on_folder``, the dataset's labels or regions and ignore label)
   compares them with the labels and writes ``summary.json`` there.

The cases are the fold's validation cases (``splits_final.json``, images from ``imagesTr``, labels from
``labelsTr``) or every case of an images folder with a labels folder. The blur acts in voxels: on all three
axes for 3-D configurations, for 2-D ones on the two in-plane axes of the slices nnU-Net's 2-D network sees
(every axis but ``transpose_forward[0]``, the one nnU-Net slices along). The noise is seeded per case and
corruption, so every trainer sees the same corrupted images.

The report is a table of the Dice per class (nnU-Net's mean over cases) and its mean over the foreground
classes, per trainer and corruption, printed and written to ``robustness.json``, ``robustness.csv`` and
``robustness.png`` in the output folder. An output folder with a report, or with the prediction folder of a
requested step, is refused before any work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.utilities.utils import (
    create_lists_from_splitted_dataset_folder,
    get_identifiers_from_splitted_dataset_folder,
)

from nnunet_deconver.analysis.corruptions import CORRUPTION_NAMES, Corruption, corruption_seed, select_corruptions
from nnunet_deconver.analysis.robustness_report import (
    REPORT_FILES,
    RobustnessReport,
    StepResult,
    n_cases,
    write_report,
)

LOG_NAME = "nnunet_predict.log"  # what nnU-Net's predictor prints, per trainer


@dataclass(frozen=True)
class RobustnessRequest:
    """What the user asked for (the command's options)."""

    dataset: str
    configuration: str
    trainers: tuple[str, ...]
    fold: str = "0"
    plans: str = "nnUNetPlans"
    checkpoint: str = "checkpoint_final.pth"
    corruptions: tuple[str, ...] = CORRUPTION_NAMES
    images: Path | None = None
    labels: Path | None = None
    output: Path | None = None
    device: str = "cpu"
    seed: int = 0
    num_processes: int = default_num_processes


@dataclass(frozen=True)
class CaseSet:
    """The cases to corrupt and predict: each one's image files (one per channel) and its labels' folder."""

    images: dict[str, list[str]]
    labels: Path


@dataclass(frozen=True)
class RobustnessRun:
    """A checked request: everything exists, nothing is written yet."""

    request: RobustnessRequest
    dataset_name: str
    fold: int | str
    model_folders: dict[str, Path]
    corruptions: tuple[Corruption, ...]
    cases: CaseSet
    output: Path
    dataset_json: dict
    plans_manager: PlansManager
    blur_axes: tuple[int, ...]
    classes: dict[int | tuple[int, ...], str]  # the evaluated labels (or regions) and their names


# ---------------------------------------------------------------------------------------------- checks


def _nnunet_folder(variable: object, name: str) -> Path:
    """One of nnU-Net's folder variables (``nnunetv2.paths``) as a Path."""
    if not variable:
        raise ValueError(f"{name} is not set: export {name}=<folder> (nnU-Net's documentation/setting_up_paths.md).")
    return Path(variable)


def _dataset_name(dataset: str) -> str:
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"Unknown dataset {dataset!r}: no unique DatasetXXX_ folder for it in nnUNet_raw, "
                         f"nnUNet_preprocessed or nnUNet_results.") from error


def _parse_fold(fold: str) -> int | str:
    if fold == "all":
        return fold
    if not fold.isdigit():
        raise ValueError(f"Fold {fold!r} is neither a fold number nor 'all'.")
    return int(fold)


def _check_device(device: str) -> None:
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device, False):
        raise ValueError(f"Device {device!r} is not available here; use one of "
                         f"{', '.join(name for name, ok in available.items() if ok)}.")


def model_folders(request: RobustnessRequest, dataset_name: str) -> dict[str, Path]:
    """Each trainer's model folder, after checking that it holds the fold's checkpoint.

    Raises:
        FileNotFoundError: a model folder or checkpoint is missing.
    """
    results = _nnunet_folder(nnUNet_results, "nnUNet_results")
    folders = {}
    for trainer in dict.fromkeys(request.trainers):
        folder = results / dataset_name / f"{trainer}__{request.plans}__{request.configuration}"
        checkpoint = folder / f"fold_{request.fold}" / request.checkpoint
        if not checkpoint.is_file():
            missing = folder if not folder.is_dir() else checkpoint
            raise FileNotFoundError(
                f"{missing} does not exist; train it with nnUNetv2_train {dataset_name} {request.configuration} "
                f"{request.fold} -tr {trainer} -p {request.plans}.")
        folders[trainer] = folder
    return folders


def blur_axes(plans_manager: PlansManager, configuration: ConfigurationManager) -> tuple[int, ...]:
    """The spatial axes of an image, as the plans' reader returns it, that the blur acts on: all three for a
    3-D configuration; for a 2-D one the in-plane axes of nnU-Net's slices (all but ``transpose_forward[0]``)."""
    if len(configuration.patch_size) == 3:
        return (0, 1, 2)
    through_plane = plans_manager.transpose_forward[0]
    return tuple(axis for axis in range(3) if axis != through_plane)


def validation_cases(dataset_name: str, fold: int | str) -> list[str]:
    """The fold's validation cases from ``nnUNet_preprocessed/<Dataset>/splits_final.json``.

    Raises:
        ValueError: fold 'all' (no validation cases) or a fold the split file does not have.
        FileNotFoundError: no split file.
    """
    if fold == "all":
        raise ValueError("Fold 'all' trains on every case and has no validation cases; pass -i IMAGES -l LABELS.")
    split_file = _nnunet_folder(nnUNet_preprocessed, "nnUNet_preprocessed") / dataset_name / "splits_final.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} does not exist (nnUNetv2_train writes it); it names the fold's "
                                f"validation cases. Or pass -i IMAGES -l LABELS.")
    splits = load_json(split_file)
    if fold >= len(splits):
        raise ValueError(f"{split_file} has {len(splits)} folds; there is no fold {fold}.")
    return list(splits[fold]["val"])


def case_set(images: Path, labels: Path, dataset_json: dict, identifiers: Sequence[str] | None = None) -> CaseSet:
    """The cases of an nnU-Net images folder (``CASE_0000<ending>`` ...), all of them or ``identifiers``,
    with their labels ``labels/CASE<ending>``.

    Raises:
        FileNotFoundError: a folder, a channel file or a label is missing, or no images at all.
    """
    ending = dataset_json["file_ending"]
    for folder in (images, labels):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder.")
    if identifiers is None:
        identifiers = [str(case) for case in get_identifiers_from_splitted_dataset_folder(str(images), ending)]
        if not identifiers:
            raise FileNotFoundError(f"{images} holds no images named CASE_0000{ending}.")
    files = create_lists_from_splitted_dataset_folder(str(images), ending, list(identifiers), num_processes=1)
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    incomplete = [case for case, channels in zip(identifiers, files, strict=True) if len(channels) != n_channels]
    if incomplete:
        raise FileNotFoundError(f"{images} does not hold the {n_channels} channel file(s) CASE_0000{ending} ... of "
                                f"{_some(incomplete)}.")
    unlabelled = [case for case in identifiers if not (labels / f"{case}{ending}").is_file()]
    if unlabelled:
        raise FileNotFoundError(f"{labels} holds no labels CASE{ending} for {_some(unlabelled)}.")
    return CaseSet(dict(zip(identifiers, files, strict=True)), labels)



def _some(cases: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return f"{n_cases(len(cases))}: {', '.join(cases[:shown])}{more}"


def refuse_existing_report(output: Path, trainers: Sequence[str], corruptions: Sequence[Corruption]) -> None:
    """Raise FileExistsError if ``output`` holds a report or a prediction folder this run would write."""
    targets = [output / name for name in REPORT_FILES]
    targets += [prediction_folder(output, trainer, corruption) for trainer in trainers for corruption in corruptions]
    for target in targets:
        if target.exists():
            raise FileExistsError(f"{target} exists already; an earlier robustness report is never overwritten: "
                                  f"pass another -o.")


def prediction_folder(output: Path, trainer: str, corruption: Corruption) -> Path:
    return output / trainer / corruption.name


def prepare_run(request: RobustnessRequest) -> RobustnessRun:
    """Check the request against the nnU-Net folders; writes nothing.

    Raises:
        ValueError: unknown corruption, dataset or device, -i without -l, a cascade configuration, bad fold.
        FileNotFoundError: a missing model folder, checkpoint, split file, image or label.
        FileExistsError: the output folder holds an earlier report.
    """
    corruptions = select_corruptions(request.corruptions)
    if (request.images is None) != (request.labels is None):
        raise ValueError("-i IMAGES and -l LABELS go together: give both, or neither for the fold's validation cases.")
    fold = _parse_fold(request.fold)
    _check_device(request.device)
    dataset_name = _dataset_name(request.dataset)
    folders = model_folders(request, dataset_name)
    first_model = next(iter(folders.values()))
    dataset_json = load_json(first_model / "dataset.json")
    plans_manager = PlansManager(str(first_model / "plans.json"))
    configuration = plans_manager.get_configuration(request.configuration)
    if configuration.previous_stage_name is not None:
        raise ValueError(f"{request.configuration} is a cascade stage (it needs {configuration.previous_stage_name}'s "
                         f"segmentations); evaluate a configuration without a previous stage.")
    output = request.output or (_nnunet_folder(nnUNet_results, "nnUNet_results") / dataset_name /
                                f"robustness_{request.plans}_{request.configuration}_fold{request.fold}")
    refuse_existing_report(output, list(folders), corruptions)
    if request.images is None:
        raw = _nnunet_folder(nnUNet_raw, "nnUNet_raw") / dataset_name
        cases = case_set(raw / "imagesTr", raw / "labelsTr", dataset_json, validation_cases(dataset_name, fold))
    else:
        cases = case_set(request.images, request.labels, dataset_json)
    return RobustnessRun(request, dataset_name, fold, folders, corruptions, cases, output, dataset_json, plans_manager,
                         blur_axes(plans_manager, configuration), class_names(dataset_json, plans_manager))


# ------------------------------------------------------------------------------------ predict, evaluate


def class_names(dataset_json: dict, plans_manager: PlansManager) -> dict[int | tuple[int, ...], str]:
    """The foreground labels (or regions) nnU-Net evaluates, with their names in dataset.json."""
    label_manager = plans_manager.get_label_manager(dataset_json)
    evaluated = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    names = {_label_key(value): name for name, value in label_manager.label_dict.items() if name != "ignore"}
    return {_label_key(key): names.get(_label_key(key), str(key)) for key in evaluated}


def _label_key(value: int | Sequence[int]) -> int | tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)


def load_predictor(model_folder: Path, fold: int | str, checkpoint: str, device: str) -> nnUNetPredictor:
    """nnU-Net's predictor for one fold, with nnUNetv2_predict's default settings."""
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=torch.device(device), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,), checkpoint)
    return predictor


def corrupted_inputs(predictor: nnUNetPredictor, run: RobustnessRun, corruption: Corruption,
                     folder: Path) -> Iterator[dict]:
    """The predictor's input items, one case at a time: read, corrupted, preprocessed; exported to ``folder``."""
    reader = predictor.plans_manager.image_reader_writer_class()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    for case, files in run.cases.images.items():
        image, properties = reader.read_images(files)
        corrupted = corruption.apply(image, blur_axes=run.blur_axes,
                                     seed=corruption_seed(run.request.seed, case, corruption.name))
        data, _, properties = preprocessor.run_case_npy(corrupted, None, properties, predictor.plans_manager,
                                                        predictor.configuration_manager, predictor.dataset_json)
        yield {"data": torch.from_numpy(data).to(torch.float32).contiguous(), "data_properties": properties,
               "ofile": str(folder / case)}


def evaluate_folder(run: RobustnessRun, folder: Path) -> dict:
    """nnU-Net's evaluation of the segmentations in ``folder``; writes ``folder/summary.json``."""
    label_manager = run.plans_manager.get_label_manager(run.dataset_json)
    return compute_metrics_on_folder(str(run.cases.labels), str(folder), str(folder / "summary.json"),
                                     run.plans_manager.image_reader_writer_class(), run.dataset_json["file_ending"],
                                     list(run.classes), label_manager.ignore_label,
                                     num_processes=run.request.num_processes, chill=True)


def step_result(trainer: str, corruption: str, summary: dict, classes: dict[int | tuple[int, ...], str]) -> StepResult:
    """The Dice values of an nnU-Net evaluation (``compute_metrics_on_folder``'s result)."""
    dice = {name: float(summary["mean"][key]["Dice"]) for key, name in classes.items()}
    return StepResult(trainer, corruption, dice, float(summary["foreground_mean"]["Dice"]))


def predict_and_evaluate(run: RobustnessRun, predictor: nnUNetPredictor, corruption: Corruption,
                         folder: Path) -> dict:
    """Predict every case under ``corruption`` into ``folder`` and evaluate it there (nnU-Net's summary)."""
    folder.mkdir(parents=True)
    predictor.predict_from_data_iterator(corrupted_inputs(predictor, run, corruption, folder),
                                         num_processes_segmentation_export=run.request.num_processes)
    return evaluate_folder(run, folder)


class Progress:
    """Prints ``[i/n] trainer · corruption: k cases … mean Dice d (step s; elapsed s)``, one line per step."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = self.step_started = time.perf_counter()

    def start(self, trainer: str, corruption: str, count: int) -> None:
        self.step_started = time.perf_counter()
        print(f"[{self.done + 1}/{self.total}] {trainer} · {corruption}: {n_cases(count)} …", end="", flush=True)

    def finish(self, result: StepResult) -> None:
        self.done += 1
        now = time.perf_counter()
        print(f" mean Dice {result.mean_dice:.3f} ({now - self.step_started:.0f} s; {now - self.started:.0f} s "
              f"elapsed)", flush=True)


def run_robustness_report(request: RobustnessRequest) -> tuple[RobustnessReport, list[Path]]:
    """Predict and evaluate every trainer under every corruption, printing one line per step; write the report.

    nnU-Net's own output goes to ``<output>/<trainer>/nnunet_predict.log``. Returns the report and the files
    written (JSON, CSV, PNG). Raises as :func:`prepare_run`, before any work.
    """
    run = prepare_run(request)
    progress = Progress(len(run.model_folders) * len(run.corruptions))
    results = []
    for trainer, model_folder in run.model_folders.items():
        (run.output / trainer).mkdir(parents=True, exist_ok=True)
        predictor = None
        for corruption in run.corruptions:
            progress.start(trainer, corruption.name, len(run.cases.images))
            with open(run.output / trainer / LOG_NAME, "a") as log, redirect_stdout(log):
                predictor = predictor or load_predictor(model_folder, run.fold, request.checkpoint, request.device)
                summary = predict_and_evaluate(run, predictor, corruption,
                                               prediction_folder(run.output, trainer, corruption))
            results.append(step_result(trainer, corruption.name, summary, run.classes))
            progress.finish(results[-1])
    report = RobustnessReport(run.dataset_name, request.configuration, request.fold, request.plans, request.checkpoint,
                              request.seed, tuple(run.cases.images), str(run.cases.labels),
                              {c.name: c.describe(run.blur_axes) for c in run.corruptions},
                              tuple(run.classes.values()), tuple(results))
    return report, write_report(report, run.output)
