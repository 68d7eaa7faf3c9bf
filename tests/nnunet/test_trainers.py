"""Trainer discovery after install and the networks the trainers build from nnU-Net plans."""

from __future__ import annotations

import os

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_deconver.shipped_folders import shipped_folder
from support.plans import configuration_manager as configuration
from support.processes import python_in_fresh_process
from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.layers import NonnegativeDeconvolution
from nnunet_deconver.nnunet.plans_topology import TOPOLOGY_KEYS
from nnunet_deconver.nnunet.trainers import trainer_classes
from nnunet_deconver.nnunet.trainers import (
    nnUNetTrainerDeconver,
    nnUNetTrainerDeconver_k3,
    nnUNetTrainerDeconver_k5,
)

EXT_FOLDER = shipped_folder("trainers")


def test_install_registers_the_external_trainer_folder() -> None:
    value = python_in_fresh_process("import os; print(os.environ['nnUNet_extTrainer'])")
    assert value.split(os.pathsep) == [EXT_FOLDER]


def test_a_folder_the_user_set_is_kept_first_and_not_duplicated() -> None:
    user_value = os.pathsep.join(["/opt/my_trainers", EXT_FOLDER])
    value = python_in_fresh_process("import os; print(os.environ['nnUNet_extTrainer'])", nnUNet_extTrainer=user_value)
    assert value == user_value
    value = python_in_fresh_process("import os; print(os.environ['nnUNet_extTrainer'])",
                                    nnUNet_extTrainer="/opt/my_trainers")
    assert value.split(os.pathsep) == ["/opt/my_trainers", EXT_FOLDER]


def ndc_kernels(network: torch.nn.Module) -> list[tuple[int, ...]]:
    return [m.kernel_size for m in network.modules() if isinstance(m, NonnegativeDeconvolution)]


@pytest.mark.parametrize(
    ("trainer", "spatial_dims", "first_kernel", "deep_kernel"),
    [
        (nnUNetTrainerDeconver, 3, (1, 3, 3), (3, 3, 3)),
        (nnUNetTrainerDeconver, 2, (5, 5), (5, 5)),
        (nnUNetTrainerDeconver_k3, 2, (3, 3), (3, 3)),
        (nnUNetTrainerDeconver_k5, 3, (1, 5, 5), (5, 5, 5)),
    ],
)
def test_trainers_build_deconver_from_plans(trainer, spatial_dims, first_kernel, deep_kernel) -> None:
    config = configuration(spatial_dims)
    network = trainer.build_network_architecture(None, config, 2, 3, enable_deep_supervision=True)
    assert isinstance(network, DeconverUNet)
    kernels = ndc_kernels(network)
    assert kernels[0] == first_kernel and kernels[-2] == deep_kernel
    outputs = network(torch.rand(1, 2, *config.patch_size))
    assert [tuple(o.shape[2:]) for o in outputs][0] == tuple(config.patch_size)
    assert all(o.shape[1] == 3 for o in outputs) and len(outputs) == 2


def test_predictor_style_call_loads_a_training_checkpoint_strictly() -> None:
    """nnU-Net's predictor rebuilds with deep supervision off and loads the weights strictly."""
    config = configuration(3)
    trained = nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, True)
    rebuilt = nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, enable_deep_supervision=False)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    x = torch.rand(1, 1, *config.patch_size)
    torch.testing.assert_close(rebuilt(x), trained(x)[0])


def test_plans_without_topology_get_a_clear_error() -> None:
    config = configuration(2)
    del config.configuration["architecture"]["arch_kwargs"]["strides"]
    with pytest.raises(ValueError, match="strides"):
        nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, True)


@pytest.mark.parametrize("wrapper", ["plain", "ddp", "compile"])
def test_nnunet_toggles_deep_supervision_through_wrappers(wrapper: str, tmp_path) -> None:
    """nnU-Net's own set_deep_supervision_enabled must reach our decoder through DDP and torch.compile."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    config = configuration(2)
    network = nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, enable_deep_supervision=True)
    wrapped = network
    if wrapper == "ddp":
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        wrapped = torch.nn.parallel.DistributedDataParallel(network)
    elif wrapper == "compile":
        wrapped = torch.compile(network, backend="eager")
    try:
        x = torch.rand(1, 1, *config.patch_size)
        fake_trainer = SimpleNamespace(is_ddp=wrapper == "ddp", network=wrapped)
        nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, False)
        assert isinstance(wrapped(x), torch.Tensor)
        nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, True)
        assert isinstance(wrapped(x), list)
    finally:
        if wrapper == "ddp":
            dist.destroy_process_group()


def test_every_trainer_of_the_package_is_found_by_nnunet_through_the_trainers_folder() -> None:
    """trainers/ re-exports each family's classes: every trainer the package defines resolves by name."""
    names = sorted(trainer_classes())
    code = (
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        f"for name in {names!r}:\n"
        "    cls = find(name)\n"
        "    print('FOUND', cls.__module__ + '.' + cls.__qualname__)"
    )
    found = [line.split()[1] for line in python_in_fresh_process(code).splitlines() if line.startswith("FOUND ")]
    assert found == [f"{trainer_classes()[name].__module__}.{name}" for name in names]
    assert {"nnUNetTrainerDeconver", "nnUNetTrainerFactorizerSwin", "nnUNetTrainerDTC"} <= set(names)


def test_a_trainer_refuses_bad_plans_before_nnunet_creates_its_output_folder(toy_plans, tmp_path, monkeypatch) -> None:
    """The meta-device check runs in the trainer's constructor: one line, and no folder in nnUNet_results."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    monkeypatch.setattr(nnunet_trainer_module, "nnUNet_results", str(tmp_path))
    configuration = toy_plans["configurations"]["2d"]
    planned = configuration["architecture"]["arch_kwargs"]
    topology = {key: planned[key] for key in TOPOLOGY_KEYS}
    configuration["architecture"] = {"network_class_name": "nnunet_deconver.architectures.deconver_unet.DeconverUNet",
                                     "arch_kwargs": {**topology, "ratio": -2}, "_kw_requires_import": ["conv_op"]}
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 5,
                    "file_ending": ".nii.gz"}
    with pytest.raises(ValueError, match=r"nnUNetTrainerDeconver cannot train configuration '2d'.*ratio=-2") as error:
        nnUNetTrainerDeconver(toy_plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def _checkpointed_levels(network: torch.nn.Module) -> set[bool]:
    from nnunet_deconver.architectures.activation_checkpointing import StageSequence
    from nnunet_deconver.layers import DeformableTransposedConv

    return {m.checkpointed for m in network.modules() if isinstance(m, (StageSequence, DeformableTransposedConv))}


@pytest.mark.parametrize("family", ["nnUNetTrainerDeconver", "nnUNetTrainerFactorizerSwin", "nnUNetTrainerDTC"])
@pytest.mark.parametrize(("suffix", "expected"), [("", {True}), ("_selectiveCheckpointing", {True, False}),
                                                   ("_noCheckpointing", {False})])
def test_memory_variants_set_the_checkpointing_mode_on_nnunet_and_derived_plans(family, suffix, expected) -> None:
    """The default trainer checkpoints every block (and DTC upsampler); the variants select their mode, also
    over a mode a derived plans file prescribes."""
    trainer = trainer_classes()[family + suffix]
    manager = configuration(3, features=(8, 16, 32, 32))
    with torch.device("meta"):
        network = trainer.build_network_architecture(None, manager, 1, 2, True)
    assert _checkpointed_levels(network) == expected
    if family == "nnUNetTrainerDTC":
        return  # DTC trainers train nnU-Net's plans only (DTC presets train with nnUNetTrainer)
    derived = trainer.network_architecture(manager)
    derived["arch_kwargs"]["activation_checkpointing"] = "full" if suffix else "off"
    prescribed = ConfigurationManager({**manager.configuration, "architecture": derived})
    if suffix:
        assert trainer.network_architecture(prescribed)["arch_kwargs"]["activation_checkpointing"] == \
            trainer.activation_checkpointing
    else:
        assert trainer.network_architecture(prescribed)["arch_kwargs"]["activation_checkpointing"] == "off"
