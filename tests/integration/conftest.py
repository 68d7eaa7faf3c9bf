"""Fixtures shared by the integration modules: one tiny MNI152 dataset trained once for the SUM family's tests
(trainers, ``nnunet-deconver impulse``, ``nnunet-deconver robustness``), so CI plans and trains it only once."""

from __future__ import annotations

import pytest

from nnunet_deconver.nnunet.demo.mni152_dataset import MNI152Dataset, write_mni152_dataset
from nnunet_deconver.nnunet.demo.nnunet_commands import NnUNetFolders
from support.integration import CONFIGURATIONS, DATASET_ID, SUM_FAMILY_RUNS, run


@pytest.fixture(scope="session")
def sum_family_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[NnUNetFolders, MNI152Dataset]:
    """Plan + preprocess 2d and 3d_fullres, then train fold 0 of every run of :data:`SUM_FAMILY_RUNS`."""
    folders = NnUNetFolders.inside(tmp_path_factory.mktemp("nnunet_sum_family"))
    dataset = write_mni152_dataset(folders.raw, dataset_id=DATASET_ID, n_training=6, n_test=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS,
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"], folders)
    for trainer, configuration in SUM_FAMILY_RUNS:
        run(["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", trainer, "-device", "cpu"], folders)
    return folders, dataset
