"""A small nnU-Net v2 raw dataset (T1 -> grey/white matter) built offline from data inside nilearn.

Data source: the nilearn wheel ships the MNI ICBM152 2009 (release a) template at 1 mm,
``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, read here through
:func:`nilearn.datasets.load_mni152_template`, :func:`~nilearn.datasets.load_mni152_gm_template` and
:func:`~nilearn.datasets.load_mni152_wm_template` (skull-stripped T1 and tissue probability maps, each
rescaled to [0, 1]; no download happens). All three are resampled linearly to an isotropic grid of
``resolution_mm`` and cropped once to the brain's bounding box (T1 above 10 % of its maximum, plus a
one-voxel margin), so every case has the same in-plane size.

Label rule: 0 background (includes CSF and partial-volume voxels), 1 grey matter where the GM probability
is >= 0.5, 2 white matter where the WM probability is >= 0.5; where both are >= 0.5 the larger wins (a tie
goes to grey matter). In the shipped maps GM + WM never exceeds 1, so the tie-break never applies there.

Cases are slabs of ``slab_thickness`` consecutive axial slices. The ``n_training + n_test`` slab start
positions are spread evenly (rounded, all distinct, overlap allowed) from the bottom to the top of the
brain; the test slabs are the ones at positions ``floor((k + 0.5) * n_cases / n_test)`` of that sequence,
so each lies between training slabs and never coincides with one. Every image gets a deterministic
perturbation drawn from ``numpy.random.default_rng([seed, case_index])``: a global gain in [0.9, 1.1], a
smooth multiplicative bias field (second-order polynomial, at most 5-10 % away from 1) and Gaussian noise
with a standard deviation of 2-3 % of the clean template's intensity range. Labels are never perturbed,
so they do not depend on ``seed``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
from nilearn.image import resample_img
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
CHANNEL_NAMES = {"0": "T1"}
FILE_ENDING = ".nii.gz"
CASE_PREFIX = "MNI152"

TISSUE_THRESHOLD = 0.5
BRAIN_THRESHOLD = 0.1  # fraction of the resampled T1's maximum
CROP_MARGIN_VOXELS = 1
GAIN_RANGE = (0.9, 1.1)
BIAS_AMPLITUDE_RANGE = (0.05, 0.10)  # largest |bias field - 1| within a slab
NOISE_FRACTION_RANGE = (0.02, 0.03)  # noise standard deviation / clean intensity range

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class MNI152Dataset:
    """Where :func:`write_mni152_dataset` put the dataset and which cases it holds."""

    folder: Path
    dataset_id: int
    name: str
    training_cases: tuple[str, ...]
    test_cases: tuple[str, ...]

    @property
    def images_tr(self) -> Path:
        return self.folder / "imagesTr"

    @property
    def labels_tr(self) -> Path:
        return self.folder / "labelsTr"

    @property
    def images_ts(self) -> Path:
        return self.folder / "imagesTs"

    @property
    def labels_ts(self) -> Path:
        return self.folder / "labelsTs"


@dataclass(frozen=True)
class _Volume:
    """The resampled, brain-cropped template: T1 intensities, tissue labels and their voxel-to-mm affine."""

    t1: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def write_mni152_dataset(raw_folder: Path, dataset_id: int = 990, dataset_name: str = "MNI152Tissue",
                         n_training: int = 10, n_test: int = 2, resolution_mm: float = 4.0,
                         slab_thickness: int = 8, seed: int = 0) -> MNI152Dataset:
    """Write ``raw_folder / f"Dataset{dataset_id:03d}_{dataset_name}"`` as an nnU-Net v2 raw dataset.

    The folder gets imagesTr/, labelsTr/, imagesTs/, labelsTs/ and a dataset.json written by nnU-Net's
    ``generate_dataset_json``; cases are named ``MNI152_000``, ``MNI152_001``, ... (training first, then
    test). See the module docstring for the data, the label rule, the slab positions and the perturbation.
    With the defaults each case is 38 x 47 x 8 voxels (x, y, z) of 4 mm.

    Raises:
        ValueError: for arguments nnU-Net or the template cannot work with (the message names the fix).
        FileExistsError: if the dataset folder, or any other folder with this dataset id, exists already
            in ``raw_folder``; nothing is ever overwritten.
    """
    _check_arguments(dataset_id, dataset_name, n_training, n_test, resolution_mm, slab_thickness)
    raw_folder = Path(raw_folder)
    name = f"Dataset{dataset_id:03d}_{dataset_name}"
    folder = raw_folder / name
    _refuse_to_overwrite(raw_folder, folder, dataset_id)

    volume = _brain_volume(resolution_mm)
    training_starts, test_starts = _slab_starts(volume.t1.shape[2], slab_thickness, n_training, n_test)
    intensity_range = float(volume.t1.max() - volume.t1.min())
    case_names = [f"{CASE_PREFIX}_{index:03d}" for index in range(n_training + n_test)]

    raw_folder.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    try:
        for subfolder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (folder / subfolder).mkdir()
        for index, (case, start) in enumerate(zip(case_names, training_starts + test_starts)):
            split = "Tr" if index < n_training else "Ts"
            rng = np.random.default_rng([seed, index])
            image = _perturb(volume.t1[:, :, start:start + slab_thickness], rng, intensity_range)
            labels = volume.labels[:, :, start:start + slab_thickness]
            affine = volume.affine @ _translation(0, 0, start)
            _save(image.astype(np.float32), affine, folder / f"images{split}" / f"{case}_0000{FILE_ENDING}")
            _save(labels, affine, folder / f"labels{split}" / f"{case}{FILE_ENDING}")
        generate_dataset_json(
            str(folder), channel_names=dict(CHANNEL_NAMES), labels=dict(LABELS), num_training_cases=n_training,
            file_ending=FILE_ENDING, dataset_name=name,
            description=(f"Axial slabs of {slab_thickness} slices at {resolution_mm:g} mm from the MNI ICBM152 2009a "
                         f"template shipped with nilearn; labels: GM/WM probability >= {TISSUE_THRESHOLD}; "
                         f"images perturbed with seed {seed}."),
            reference="https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009 (via nilearn.datasets)",
            license="MNI ICBM152 2009 template terms, Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
                    "Imaging Centre, Montreal Neurological Institute, McGill University",
            converted_by="nnunet_deconver.nnunet.demo.mni152_dataset.write_mni152_dataset",
        )
    except BaseException:
        shutil.rmtree(folder)  # only this call created it; leave no half-written dataset behind
        raise
    return MNI152Dataset(folder, dataset_id, name, tuple(case_names[:n_training]), tuple(case_names[n_training:]))


def _check_arguments(dataset_id: int, dataset_name: str, n_training: int, n_test: int, resolution_mm: float,
                     slab_thickness: int) -> None:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be 1..999 (nnU-Net uses three-digit ids), got {dataset_id}.")
    if not _DATASET_NAME.fullmatch(dataset_name):
        raise ValueError(f"dataset_name must be letters, digits, '_' or '-' (it becomes a folder name), "
                         f"got {dataset_name!r}.")
    if n_training < 5:
        raise ValueError(f"n_training must be at least 5 for nnU-Net's 5-fold cross-validation, got {n_training}.")
    if n_test < 0:
        raise ValueError(f"n_test must be 0 or more, got {n_test}.")
    if not resolution_mm > 0:
        raise ValueError(f"resolution_mm must be a positive voxel size in mm (e.g. 4.0), got {resolution_mm}.")
    if slab_thickness < 4:
        raise ValueError(f"slab_thickness must be at least 4 slices so nnU-Net can plan a 3D network, "
                         f"got {slab_thickness}.")


def _refuse_to_overwrite(raw_folder: Path, folder: Path, dataset_id: int) -> None:
    if folder.exists():
        raise FileExistsError(f"{folder} exists already; delete it or choose another dataset id.")
    same_id = sorted(raw_folder.glob(f"Dataset{dataset_id:03d}_*"))  # nnU-Net finds datasets by id alone
    if same_id:
        raise FileExistsError(f"nnU-Net dataset id {dataset_id} is taken by {same_id[0]}; delete that folder or "
                              f"choose another dataset id.")


def _brain_volume(resolution_mm: float) -> _Volume:
    """Template, GM and WM maps resampled to ``resolution_mm``, labelled and cropped to the brain."""
    t1_image = load_mni152_template()
    affine = t1_image.affine.copy()
    affine[:3, :3] *= resolution_mm
    shape = tuple(int(np.ceil(size / resolution_mm)) for size in t1_image.shape)

    def resampled(image: nib.Nifti1Image) -> np.ndarray:
        return np.asarray(resample_img(image, target_affine=affine, target_shape=shape,
                                       interpolation="linear").get_fdata())

    t1 = resampled(t1_image)
    labels = tissue_labels(resampled(load_mni152_gm_template()), resampled(load_mni152_wm_template()))
    brain = np.argwhere(t1 > BRAIN_THRESHOLD * t1.max())
    low = np.maximum(brain.min(axis=0) - CROP_MARGIN_VOXELS, 0)
    high = np.minimum(brain.max(axis=0) + 1 + CROP_MARGIN_VOXELS, shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    return _Volume(t1[box], labels[box], affine @ _translation(*low))


def tissue_labels(grey_matter: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """0 background, 1 where P(GM) >= 0.5, 2 where P(WM) >= 0.5; the larger probability wins if both are."""
    labels = np.zeros(grey_matter.shape, dtype=np.uint8)
    labels[(grey_matter >= TISSUE_THRESHOLD) & (grey_matter >= white_matter)] = LABELS["grey_matter"]
    labels[(white_matter >= TISSUE_THRESHOLD) & (white_matter > grey_matter)] = LABELS["white_matter"]
    return labels


def _slab_starts(n_slices: int, slab_thickness: int, n_training: int, n_test: int) -> tuple[list[int], list[int]]:
    """First slice of each training and each test slab (see the module docstring)."""
    n_positions = n_slices - slab_thickness + 1
    n_cases = n_training + n_test
    if n_cases > n_positions:
        raise ValueError(
            f"The brain is {n_slices} axial slices thick here, which gives {max(n_positions, 0)} distinct slabs of "
            f"{slab_thickness} slices but {n_cases} cases were asked for; lower n_training/n_test, "
            f"slab_thickness or resolution_mm."
        )
    starts = [int(s) for s in np.round(np.linspace(0, n_positions - 1, n_cases))]
    test_indices = {int((k + 0.5) * n_cases / n_test) for k in range(n_test)}
    training = [s for i, s in enumerate(starts) if i not in test_indices]
    test = [s for i, s in enumerate(starts) if i in test_indices]
    return training, test


def _perturb(clean: np.ndarray, rng: np.random.Generator, intensity_range: float) -> np.ndarray:
    """Global gain x smooth polynomial bias field x clean slab, plus Gaussian noise."""
    x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, size) for size in clean.shape), indexing="ij")
    monomials = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    field = sum(c * m for c, m in zip(rng.normal(size=len(monomials)), monomials))
    bias = 1.0 + rng.uniform(*BIAS_AMPLITUDE_RANGE) * field / np.abs(field).max()
    gain = rng.uniform(*GAIN_RANGE)
    noise = rng.normal(0.0, rng.uniform(*NOISE_FRACTION_RANGE) * intensity_range, clean.shape)
    return gain * bias * clean + noise


def _translation(i: int, j: int, k: int) -> np.ndarray:
    """Voxel-space shift by (i, j, k): right-multiplied onto an affine, it moves the grid's origin there."""
    shift = np.eye(4)
    shift[:3, 3] = (i, j, k)
    return shift


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code="mni")
    image.set_sform(affine, code="mni")
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
