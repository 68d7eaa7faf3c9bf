"""Factorizer trainers: discovery by nnU-Net after install and the networks built from plans."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding
from nnunet_deconver.nnunet.presets import load_preset
from support.plans import configuration_manager as configuration
from nnunet_deconver.nnunet.trainers import (
    nnUNetTrainerDeconver,
    nnUNetTrainerFactorizerGlobal,
    nnUNetTrainerFactorizerLocal,
    nnUNetTrainerFactorizerSwin,
    nnUNetTrainerFactorizerSwin_smoke,
)

TRAINERS = {
    "swin": nnUNetTrainerFactorizerSwin,
    "local": nnUNetTrainerFactorizerLocal,
    "global": nnUNetTrainerFactorizerGlobal,
}


def _bridge(config: ConfigurationManager) -> tuple[int, ...]:
    strides = config.network_arch_init_kwargs["strides"]
    size = list(config.patch_size)
    for stride in strides:
        size = [n // s for n, s in zip(size, stride)]
    return tuple(size)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", list(TRAINERS))
def test_trainers_build_the_factorizer_from_nnunet_plans(kind: str, spatial_dims: int) -> None:
    """nnU-Net's own plans (PlainConvUNet topology): the trainer's matricize, the paper's BraTS block
    settings, the embedding sized from the plans' patch size (anisotropic in 3-D)."""
    config = configuration(spatial_dims)
    network = TRAINERS[kind].build_network_architecture(None, config, 2, 3, enable_deep_supervision=True)
    assert type(network) is FactorizerUNet
    layers = network.nmf_layers()
    assert len(layers) == 5
    assert {layer.matricizer.kind for layer in layers} == {kind}
    assert {(layer.matricizer.head_dim, layer.matricizer.window) for layer in layers} == {(8, 8)}
    assert {(layer.nmf.rank, layer.nmf.iterations, layer.nmf.solver) for layer in layers} == {(1, 5, "hals")}
    (embedding,) = [m for m in network.modules() if isinstance(m, PositionalEmbedding)]
    assert tuple(embedding.embedding.shape) == (1, 32, *_bridge(config))
    if spatial_dims == 3:
        assert _bridge(config) == (4, 4, 4) and network.encoder.stem.kernel_size == (1, 3, 3)
    outputs = network(torch.rand(1, 2, *config.patch_size))
    assert isinstance(outputs, list) and len(outputs) == 2
    assert tuple(outputs[0].shape) == (1, 3, *config.patch_size)


def _derived_configuration(preset: str, spatial_dims: int) -> ConfigurationManager:
    """A plans configuration rewritten by ``nnunet-deconver plan --preset``: names a package network."""
    config = configuration(spatial_dims)
    architecture = load_preset(preset).architecture(config.configuration["architecture"], "cfg", config.configuration)
    return ConfigurationManager({**config.configuration, "architecture": architecture})


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_factorizer_trainers_refuse_deconver_plans(kind: str) -> None:
    config = _derived_configuration("deconver-2d-k3", 2)
    assert type(nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, True)) is DeconverUNet
    with pytest.raises(ValueError, match=r"plans prescribe DeconverUNet but nnUNetTrainerFactorizer\w+ trains "
                                         r"FactorizerUNet"):
        TRAINERS[kind].build_network_architecture(None, config, 1, 2, True)


def test_deconver_trainer_refuses_factorizer_plans() -> None:
    config = _derived_configuration("factorizer-swin-2d", 2)
    with pytest.raises(ValueError, match="plans prescribe FactorizerUNet but nnUNetTrainerDeconver"):
        nnUNetTrainerDeconver.build_network_architecture(None, config, 1, 2, True)


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_derived_factorizer_plans_are_followed_and_a_contradicting_trainer_refuses(kind: str) -> None:
    """factorizer-<kind>-3d plans: the matching trainer builds them (patch size from the plans); a
    trainer of another matricize refuses with a clear message."""
    config = _derived_configuration(f"factorizer-{kind}-3d", 3)
    network = TRAINERS[kind].build_network_architecture(None, config, 1, 2, True)
    assert {layer.matricizer.kind for layer in network.nmf_layers()} == {kind}
    (embedding,) = [m for m in network.modules() if isinstance(m, PositionalEmbedding)]
    assert tuple(embedding.embedding.shape[2:]) == _bridge(config)
    for other, trainer in TRAINERS.items():
        if other != kind:
            with pytest.raises(ValueError, match=f"trains '{other}' Matricize but the plans prescribe '{kind}'"):
                trainer.build_network_architecture(None, config, 1, 2, True)


@pytest.mark.parametrize("trainer", [nnUNetTrainerFactorizerSwin, nnUNetTrainerFactorizerSwin_smoke])
def test_predictor_style_call_loads_a_training_checkpoint_strictly(trainer) -> None:
    """nnU-Net's predictor rebuilds with deep supervision off and loads the weights strictly."""
    config = configuration(3)
    torch.manual_seed(0)
    trained = trainer.build_network_architecture(None, config, 1, 2, True)
    with torch.no_grad():  # a checkpoint that differs from any fresh initialisation
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    rebuilt = trainer.build_network_architecture(None, config, 1, 2, enable_deep_supervision=False)
    result = rebuilt.load_state_dict(trained.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert any(name.endswith("embedding") for name in trained.state_dict())
    x = torch.rand(1, 1, *config.patch_size)
    trained.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x)[0])
