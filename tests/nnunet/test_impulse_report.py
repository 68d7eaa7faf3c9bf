"""``nnunet-deconver impulse`` without training: the report on tiny networks, its refusals, its figures, its parser.

The report's core (write_impulse_outputs) takes the network with its plans' patch and strides, so a
SUMNet and nnU-Net's PlainConvUNet built here stand in for trained model folders.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_deconver.analysis.impulse_cli import add_impulse_parser, run_impulse
from nnunet_deconver.analysis.impulse_figures import SignalFlow, save_impulse_figure, save_signal_flow_figure
from nnunet_deconver.analysis.impulse_report import (
    ImageWindow,
    ImpulseRequest,
    PlannedNetwork,
    impulse_report,
    write_impulse_outputs,
)
from nnunet_deconver.analysis.linear_response import CENTRAL_DIFFERENCE, EXACT, FORWARD_MODE
from nnunet_deconver.analysis.response_metrics import ResponseMetrics
from nnunet_deconver.architectures.sum_network import SUMNet
from nnunet_deconver.layers.shrinkage import shrinkage_modules
from nnunet_deconver.nnunet.trainers.deconver import nnUNetTrainerDeconver
from nnunet_deconver.nnunet.trainers.dtc import nnUNetTrainerDTC
from nnunet_deconver.nnunet.trainers.factorizer import nnUNetTrainerFactorizerSwin
from support.plans import configuration_manager

PNG = b"\x89PNG\r\n\x1a\n"
STRIDES_2D = [[1, 1], [2, 2], [2, 2]]
KEYS = {"model_folder", "fold", "checkpoint", "network", "kind", "alpha", "method", "input_channel", "output", "image",
        "slice", "patch_size", "crop_size", "delta_position", "receptive_field_radius", "dtype", "metrics", "notes"}


def _sum() -> PlannedNetwork:
    torch.manual_seed(0)
    network = SUMNet(1, 3, [4, 8, 16], nn.Conv2d, 3, STRIDES_2D, 3)
    with torch.no_grad():
        for shrinkage in shrinkage_modules(network):
            shrinkage.threshold.normal_(std=0.1)
    return PlannedNetwork(network, (32, 24), STRIDES_2D, 1)


def _plain_unet(spatial_dims: int = 2) -> PlannedNetwork:
    torch.manual_seed(0)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    strides = STRIDES_2D if spatial_dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    network = PlainConvUNet(1, 3, [4, 8, 16], conv, 3, strides, 2, 3, 2, conv_bias=True, norm_op=norm,
                            norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                            nonlin_kwargs={"inplace": True})
    return PlannedNetwork(network.eval(), (32, 24) if spatial_dims == 2 else (8, 16, 16), strides, 1)


def _image(planned: PlannedNetwork, label: bool = True) -> ImageWindow:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, planned.patch_size, generator=generator).float().numpy() if label else None
    return ImageWindow(torch.randn(1, 1, *planned.patch_size, generator=generator), 0, "case_0000.nii.gz", labels)


def _request(output: Path, **options) -> ImpulseRequest:
    return ImpulseRequest(Path("results/Dataset001_X/trainer__plans__2d"), output, **options)


def _report(output: Path) -> dict:
    report = json.loads((output / "impulse.json").read_text())
    assert set(report) == KEYS
    assert all(math.isfinite(value) for value in report["metrics"].values())
    return report


def test_a_sum_gets_its_exact_response_and_the_signal_flow(tmp_path: Path) -> None:
    planned = _sum()
    lines = write_impulse_outputs(_request(tmp_path / "out", image=(Path("case_0000.nii.gz"),)), planned,
                                  image=_image(planned))
    report = _report(tmp_path / "out")
    assert report["kind"] == "exact ED at alpha=0" and report["method"] == EXACT and report["alpha"] == 0.0
    assert report["crop_size"] == [128, 128] and report["delta_position"] == [64, 64]
    assert report["receptive_field_radius"] == [23, 23]  # 4 x 1 + 4 x 2 + 2 x 4 convolution steps + P - 1 = 3
    assert report["output"] == "ED channel 0"
    for name in ("impulse_response.png", "signal_flow.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG
        assert f"wrote {tmp_path / 'out' / name}" in lines
    assert lines[2].split() == ["SDS", "FDS", "FDV"]


def test_a_sum_at_alpha_1_is_linearised(tmp_path: Path) -> None:
    planned = _sum()
    write_impulse_outputs(_request(tmp_path, alpha=1.0, size=(16,), image=(Path("case_0000.nii.gz"),)), planned,
                          image=_image(planned))
    report = _report(tmp_path)
    assert report["kind"] == "linearisation of the ED at alpha=1 around the image case_0000.nii.gz"
    assert report["alpha"] == 1.0 and report["method"] == CENTRAL_DIFFERENCE  # the shrinkage has no forward-mode rule
    assert report["crop_size"] == [16, 16] and report["receptive_field_radius"] is None


def test_a_response_that_is_zero_everywhere_is_refused(tmp_path: Path) -> None:
    """Around the zero image a bias-free SUM with positive thresholds passes nothing (eq. 18's dead zone)."""
    planned = _sum()
    with torch.no_grad():
        for shrinkage in shrinkage_modules(planned.network):
            shrinkage.threshold.fill_(0.1)
    with pytest.raises(ValueError, match="zero everywhere"):
        write_impulse_outputs(_request(tmp_path / "out", alpha=1.0), planned, image=None)
    assert not (tmp_path / "out").exists()


def test_other_networks_are_linearised_on_their_patch(tmp_path: Path) -> None:
    planned = _plain_unet()
    lines = write_impulse_outputs(_request(tmp_path / "zero"), planned, image=None)
    report = _report(tmp_path / "zero")
    assert report["kind"] == "linearisation of the logits around the zero image" and report["alpha"] is None
    assert report["method"] == FORWARD_MODE and report["output"] == "logit channel 1"
    assert report["crop_size"] == [32, 24] and report["delta_position"] == [15, 11]  # P = 4: phase 3 near the centre
    assert any("exceeds the patch" in note for note in report["notes"])
    assert any(line.startswith("note: a linearisation around the zero image") for line in lines)
    assert not (tmp_path / "zero" / "signal_flow.png").exists()
    write_impulse_outputs(_request(tmp_path / "image", image=(Path("case_0000.nii.gz"),), output_channel=2), planned,
                          image=_image(planned, label=False))
    report = _report(tmp_path / "image")
    assert report["kind"] == "linearisation of the logits around the image case_0000.nii.gz"
    assert report["output"] == "logit channel 2"


@pytest.mark.parametrize(("trainer", "features", "method"), [
    (nnUNetTrainerDeconver, (4, 8, 16), CENTRAL_DIFFERENCE),  # the NDC layer has no forward-mode rule
    (nnUNetTrainerFactorizerSwin, (8, 16, 32), FORWARD_MODE),  # widths: multiples of its head dimension
    (nnUNetTrainerDTC, (4, 8, 16), CENTRAL_DIFFERENCE),  # grid_sample has none either
])
def test_the_packages_networks_are_linearised(tmp_path: Path, trainer, features, method) -> None:
    config = configuration_manager(2, features=features, patch=[16, 16])
    network = trainer.build_network_architecture(None, config, 1, 3, enable_deep_supervision=False)
    write_impulse_outputs(_request(tmp_path), PlannedNetwork(network.eval(), (16, 16), config.pool_op_kernel_sizes, 1),
                          image=None)
    assert _report(tmp_path)["method"] == method


def test_a_3d_network_gets_a_default_crop_within_its_patch(tmp_path: Path) -> None:
    write_impulse_outputs(_request(tmp_path), _plain_unet(3), image=None)
    assert _report(tmp_path)["crop_size"] == [8, 16, 16]
    assert (tmp_path / "impulse_response.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(("options", "message"), [
    ({"alpha": 0.5}, "is not a SUM"), ({"output_channel": 3}, "no output channel 3"),
    ({"input_channel": 1}, "no input channel 1"), ({"size": (8, 8, 8)}, "one value or one per axis"),
])
def test_options_the_model_does_not_have_are_refused(tmp_path: Path, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_impulse_outputs(_request(tmp_path / "out", **options), _plain_unet(), image=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"label": Path("label.nii.gz")}, "need the image"), ({"slice_index": 3}, "need the image"),
    ({"size": (2,)}, "at least 3 samples"), ({"input_channel": -1}, "numbered from 0"),
])
def test_requests_that_do_not_go_together_are_refused(tmp_path: Path, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        _request(tmp_path, **options)


def test_existing_outputs_are_refused_before_loading_or_computing(tmp_path: Path) -> None:
    (tmp_path / "impulse_response.png").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="impulse_response.png exist already"):
        impulse_report(_request(tmp_path))  # the model folder does not exist: nothing was loaded
    with pytest.raises(FileExistsError, match="impulse_response.png exist already"):
        write_impulse_outputs(_request(tmp_path), _plain_unet(), image=None)
    assert (tmp_path / "impulse_response.png").read_bytes() == b"keep"
    assert not (tmp_path / "impulse.json").exists()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-deconver")
    add_impulse_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["impulse", *argv])


def test_the_parser_maps_onto_the_request_and_missing_files_are_named(tmp_path: Path) -> None:
    args = _parse("-m", str(tmp_path / "model"), "-o", str(tmp_path / "out"), "--size", "64", "48", "--class", "2")
    assert (args.fold, args.checkpoint, args.device, args.size, args.output_channel) == ("0", "checkpoint_final.pth",
                                                                                        "cpu", [64, 48], 2)
    assert (args.image, args.label, args.alpha, args.channel) == ([], None, None, 0)
    with pytest.raises(FileNotFoundError, match="checkpoint_final.pth does not exist"):
        run_impulse(args)
    args = _parse("-m", str(tmp_path / "model"), "-o", str(tmp_path / "out"), "-i", str(tmp_path / "case_0000.nii.gz"))
    with pytest.raises(FileNotFoundError, match="case_0000.nii.gz does not exist"):
        run_impulse(args)


@pytest.mark.parametrize("shape", [(12, 10), (6, 8, 10)], ids=["2d", "3d"])
def test_the_response_figure(tmp_path: Path, shape) -> None:
    response = np.zeros(shape)
    response[tuple(n // 2 for n in shape)] = 1
    save_impulse_figure(response, tmp_path / "r.png", delta_position=[n // 2 for n in shape],
                        metrics=ResponseMetrics(0.0, 1.0, 2.0), title="a delta")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("label", [True, False])
def test_the_signal_flow_figure(tmp_path: Path, label: bool) -> None:
    picture = np.random.default_rng(0).normal(size=(16, 12))
    classes = (picture > 0).astype(np.int64)
    save_signal_flow_figure(SignalFlow(picture, picture, picture, classes, classes if label else None),
                            tmp_path / "s.png", title="flow")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
