"""The Factorizer inference settings (predict wrapper), trained-model input windows and NMF component maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch import nn

from nnunet_deconver.analysis.nmf_components import default_layers, nmf_components, save_components_figure
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.cli import main
from nnunet_deconver.nnunet.inference_knobs import (
    SETTINGS_FILE,
    NMFInferenceSettings,
    apply_settings,
    check_output_folder,
    parse_skip_layers,
    settings_applied_on_initialization,
)
from nnunet_deconver.nnunet.trained_model import network_input


def tiny_factorizer(**kwargs) -> FactorizerUNet:
    torch.manual_seed(0)
    return FactorizerUNet(1, 3, [8, 16, 16], nn.Conv2d, 3, [1, 2, 2], 2, head_dim=4, window=4,
                          patch_size=(16, 16), **kwargs)


@pytest.mark.parametrize(("values", "expected"), [
    (["6", "7"], (6, 7)), (["6,7"], (6, 7)), (["6-9"], (6, 7, 8, 9)), (["9", "2-3", "3"], (2, 3, 9)), ([], ()),
])
def test_skip_layers_accept_lists_commas_and_ranges(values, expected) -> None:
    assert parse_skip_layers(values) == expected


def test_skip_layers_reject_words() -> None:
    with pytest.raises(ValueError, match="--skip-nmf-layers takes layer numbers"):
        parse_skip_layers(["decoder"])


def test_settings_change_every_layer_and_the_output() -> None:
    network = tiny_factorizer().eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        trained = network(x)
        apply_settings(network, NMFInferenceSettings(iterations=1, rank=2, solver="mu", skip_layers=(1, 5)))
        changed = network(x)
    layers = network.nmf_layers()
    assert [layer.nmf_enabled for layer in layers] == [False, True, True, True, False]
    assert {(l.nmf.iterations, l.nmf.rank, l.nmf.solver) for l in layers} == {(1, 2, "mu")}
    assert not torch.allclose(trained, changed)
    with torch.no_grad():  # the trained settings come back exactly
        apply_settings(network, NMFInferenceSettings(iterations=5, rank=1, solver="hals"))
        assert torch.equal(network(x), trained)


def test_settings_for_a_network_without_nmf_are_refused() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 1, 1))
    assert apply_settings(plain, NMFInferenceSettings()) is None
    with pytest.raises(ValueError, match="has no NMF layers"):
        apply_settings(plain, NMFInferenceSettings(iterations=2))
    with pytest.raises(ValueError, match=r"layers 1\.\.5"):
        apply_settings(tiny_factorizer(), NMFInferenceSettings(skip_layers=(6,)))


def test_output_folders_with_predictions_are_protected(tmp_path: Path) -> None:
    settings = NMFInferenceSettings(iterations=2)
    check_output_folder(tmp_path / "new", False, settings)  # a new folder is fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", False, settings)
    used = tmp_path / "used"
    used.mkdir()
    (used / "case.nii.gz").write_bytes(b"prediction")
    with pytest.raises(FileExistsError, match="already holds files"):
        check_output_folder(used, False, settings)
    with pytest.raises(FileExistsError, match="other NMF settings"):  # plain nnUNetv2_predict output
        check_output_folder(used, True, settings)
    check_output_folder(used, True, NMFInferenceSettings())  # continuing plain predictions plainly is fine
    (used / SETTINGS_FILE).write_text(json.dumps({"iterations": 2, "rank": None, "solver": None, "skip_layers": []}))
    check_output_folder(used, True, settings)
    with pytest.raises(FileExistsError, match="other NMF settings"):
        check_output_folder(used, True, NMFInferenceSettings(iterations=3))


def test_the_predictor_applies_and_records_the_settings_then_is_restored(tmp_path: Path, monkeypatch) -> None:
    network = tiny_factorizer()

    def fake_initialize(predictor: nnUNetPredictor, *args, **kwargs) -> None:
        predictor.network = network

    monkeypatch.setattr(nnUNetPredictor, "initialize_from_trained_model_folder", fake_initialize)
    settings = NMFInferenceSettings(iterations=3, skip_layers=(2,))
    with settings_applied_on_initialization(settings, tmp_path / "out"):
        nnUNetPredictor(device=torch.device("cpu")).initialize_from_trained_model_folder("model", (0,))
    assert nnUNetPredictor.initialize_from_trained_model_folder is fake_initialize
    assert [layer.nmf.iterations for layer in network.nmf_layers()] == [3] * 5
    assert not network.nmf_layers()[1].nmf_enabled
    recorded = json.loads((tmp_path / "out" / SETTINGS_FILE).read_text())
    assert recorded == {"iterations": 3, "rank": None, "solver": None, "skip_layers": [2]}


def test_predict_command_refuses_an_output_folder_with_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "case.nii.gz").write_bytes(b"prediction")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-i", "in", "-o", str(tmp_path), "-d", "1", "-c", "2d", "--nmf-iters", "2"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "already holds files" in error and error.count("\n") == 1


def test_2d_network_input_is_the_chosen_slice_centred_and_padded() -> None:
    data = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    x, position = network_input(data, (4, 8), slice_index=1)
    assert x.shape == (1, 2, 4, 8) and position == 0
    assert torch.equal(x[0, :, :, 2:5], torch.from_numpy(data[:, 1, 1:5]))  # rows 1..4 of 6, columns padded 2 + 3
    assert x[0, :, :, :2].abs().sum() == 0 and x[0, :, :, 5:].abs().sum() == 0
    with pytest.raises(ValueError, match="outside the image's 5 slices"):
        network_input(data, (4, 8), slice_index=5)


@pytest.mark.parametrize("slice_index", [0, 3, 9])
def test_3d_network_input_is_centred_on_the_slice_and_reports_where_it_is(slice_index: int) -> None:
    data = np.random.default_rng(0).random((1, 10, 6, 6)).astype(np.float32)
    x, position = network_input(data, (4, 6, 6), slice_index)
    assert x.shape == (1, 1, 4, 6, 6)
    assert torch.equal(x[0, :, position], torch.from_numpy(data[:, slice_index]))


def test_components_of_chosen_layers_have_one_map_per_head_and_rank(tmp_path: Path) -> None:
    network = tiny_factorizer(nmf_rank=2).eval()
    layers = nmf_components(network, torch.rand(1, 1, 16, 16), [1, 3, 5])
    assert [layer.number for layer in layers] == [1, 3, 5]
    assert [layer.label for layer in layers] == ["encoder level 0", "bridge", "decoder level 0"]
    assert layers[0].components.shape == (2 * 2, 16, 16)  # 8 channels / E=4 heads x rank 2
    assert layers[1].components.shape == (2 * 4, 4, 4)
    assert all((layer.components >= 0).all() for layer in layers)  # G stays nonnegative
    assert default_layers(network) == (1, 5)
    with pytest.raises(ValueError, match=r"layers 1\.\.5"):
        nmf_components(network, torch.rand(1, 1, 16, 16), [6])
    save_components_figure(np.zeros((16, 16)), layers[0], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
