"""The embedded MNI152 tissue dataset: a valid nnU-Net raw dataset, deterministic, never overwriting."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset, tissue_labels, write_mni152_dataset

RESOLUTION_MM = 4.0
SLAB_THICKNESS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> MNI152Dataset:
    return write_mni152_dataset(tmp_path_factory.mktemp("raw"))


def cases(dataset: MNI152Dataset) -> list[tuple[str, Path, Path]]:
    """(case, image file, label file) for every training and test case."""
    return [(case, images / f"{case}_0000.nii.gz", labels / f"{case}.nii.gz")
            for names, images, labels in ((dataset.training_cases, dataset.images_tr, dataset.labels_tr),
                                          (dataset.test_cases, dataset.images_ts, dataset.labels_ts))
            for case in names]


def arrays(dataset: MNI152Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {case: (np.asarray(nib.load(image).dataobj), np.asarray(nib.load(label).dataobj))
            for case, image, label in cases(dataset)}


def slab_bottom_mm(image_file: Path) -> float:
    return float(nib.load(image_file).affine[2, 3])


def test_folder_layout(dataset: MNI152Dataset) -> None:
    assert dataset.name == "Dataset990_MNI152Tissue"
    assert dataset.folder.name == dataset.name and dataset.dataset_id == 990
    assert sorted(p.name for p in dataset.folder.iterdir()) == [
        "dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]
    for names, images, labels in ((dataset.training_cases, dataset.images_tr, dataset.labels_tr),
                                  (dataset.test_cases, dataset.images_ts, dataset.labels_ts)):
        assert sorted(p.name for p in images.iterdir()) == [f"{case}_0000.nii.gz" for case in names]
        assert sorted(p.name for p in labels.iterdir()) == [f"{case}.nii.gz" for case in names]


def test_case_names_and_counts(dataset: MNI152Dataset) -> None:
    assert dataset.training_cases == tuple(f"MNI152_{i:03d}" for i in range(10))
    assert dataset.test_cases == ("MNI152_010", "MNI152_011")


def test_dataset_json(dataset: MNI152Dataset) -> None:
    content = json.loads((dataset.folder / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "T1"}
    assert content["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    assert content["numTraining"] == 10
    assert content["file_ending"] == ".nii.gz"


def test_shapes_dtypes_and_spacing(dataset: MNI152Dataset) -> None:
    shapes = set()
    for _, image_file, label_file in cases(dataset):
        image, label = nib.load(image_file), nib.load(label_file)
        assert image.shape == label.shape
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.header.get_zooms() == (RESOLUTION_MM,) * 3 == label.header.get_zooms()
        np.testing.assert_allclose(image.affine, label.affine)
        np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), RESOLUTION_MM)
        shapes.add(image.shape)
    (shape,) = shapes
    assert shape[2] == SLAB_THICKNESS
    assert 30 <= shape[0] <= 50 and 35 <= shape[1] <= 60, shape


def test_labels_hold_the_three_classes(dataset: MNI152Dataset) -> None:
    found = [set(np.unique(label).tolist()) for _, label in arrays(dataset).values()]
    assert all(classes <= {0, 1, 2} for classes in found)
    assert sum(classes == {0, 1, 2} for classes in found) >= 0.8 * len(found)


def test_tissue_labels_rule() -> None:
    grey = np.array([0.2, 0.6, 0.1, 0.5, 0.7, 0.55, 0.5])
    white = np.array([0.3, 0.1, 0.9, 0.5, 0.6, 0.8, 0.2])
    np.testing.assert_array_equal(tissue_labels(grey, white), [0, 1, 2, 1, 1, 2, 1])


def test_overlapping_slabs_share_labels_but_not_intensities(dataset: MNI152Dataset) -> None:
    """Where two cases cover the same slice, the labels agree and the perturbed images do not."""
    data = arrays(dataset)
    bottoms = {case: slab_bottom_mm(image) for case, image, _ in cases(dataset)}
    first, second = "MNI152_000", "MNI152_001"
    shift = round((bottoms[second] - bottoms[first]) / RESOLUTION_MM)
    assert 0 < shift < SLAB_THICKNESS, "the default slabs are expected to overlap"
    (image_a, label_a), (image_b, label_b) = data[first], data[second]
    np.testing.assert_array_equal(label_a[:, :, shift:], label_b[:, :, :SLAB_THICKNESS - shift])
    difference = np.abs(image_a[:, :, shift:] - image_b[:, :, :SLAB_THICKNESS - shift])
    assert difference.mean() > 0.01


def test_test_slabs_differ_from_every_training_slab(dataset: MNI152Dataset) -> None:
    data = arrays(dataset)
    bottoms = {case: slab_bottom_mm(image) for case, image, _ in cases(dataset)}
    assert len(set(bottoms.values())) == len(bottoms)
    for test_case in dataset.test_cases:
        for training_case in dataset.training_cases:
            assert not np.array_equal(data[test_case][1], data[training_case][1])
            assert not np.array_equal(data[test_case][0], data[training_case][0])


def test_same_seed_is_reproducible_and_another_seed_only_changes_images(
        dataset: MNI152Dataset, tmp_path: Path) -> None:
    original = arrays(dataset)
    same = arrays(write_mni152_dataset(tmp_path / "same"))
    other = arrays(write_mni152_dataset(tmp_path / "other", seed=1))
    for case, (image, label) in original.items():
        np.testing.assert_array_equal(same[case][0], image)
        np.testing.assert_array_equal(same[case][1], label)
        assert not np.allclose(other[case][0], image)
        np.testing.assert_array_equal(other[case][1], label)


def test_existing_dataset_is_never_overwritten(dataset: MNI152Dataset) -> None:
    before = {p: p.stat().st_mtime_ns for p in dataset.folder.rglob("*")}
    with pytest.raises(FileExistsError, match="Dataset990_MNI152Tissue.*delete it or choose another dataset id"):
        write_mni152_dataset(dataset.folder.parent)
    with pytest.raises(FileExistsError, match="dataset id 990 is taken by .*Dataset990_MNI152Tissue"):
        write_mni152_dataset(dataset.folder.parent, dataset_name="Other")
    assert {p: p.stat().st_mtime_ns for p in dataset.folder.rglob("*")} == before


@pytest.mark.parametrize(("arguments", "message"), [
    ({"n_training": 4}, "at least 5 for nnU-Net's 5-fold"),
    ({"slab_thickness": 3}, "slab_thickness must be at least 4"),
    ({"resolution_mm": 0.0}, "resolution_mm must be a positive"),
    ({"n_test": -1}, "n_test must be 0 or more"),
    ({"dataset_id": 1000}, "dataset_id must be 1..999"),
    ({"dataset_name": "a/b"}, "dataset_name must be letters"),
    ({"n_training": 40}, "lower n_training/n_test, slab_thickness or resolution_mm"),
], ids=["few-training", "thin-slab", "zero-resolution", "negative-test", "id-1000", "slash-in-name",
        "more-slabs-than-brain"])
def test_bad_arguments_are_refused(arguments: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        write_mni152_dataset(tmp_path / "raw", **arguments)
    assert not (tmp_path / "raw").exists()


def test_a_failed_build_leaves_no_half_written_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("nnunet_deconver.nnunet.demo.mni152_dataset.generate_dataset_json", fail)
    with pytest.raises(OSError, match="disk full"):
        write_mni152_dataset(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nnunet_accepts_the_dataset(dataset: MNI152Dataset) -> None:
    verify_dataset_integrity(str(dataset.folder), num_processes=1)
