"""Deconver and Factorizer under the runtime conditions nnU-Net trains and predicts with.

* mixed precision: nnU-Net trains under ``torch.autocast`` (fp16 on CUDA); emulated here with CPU
  autocast in bfloat16 and float16, module by module against float32 (a small Swin Factorizer too);
* ``torch.compile`` (inductor on CPU) against eager, with deep supervision toggled between calls;
* ``DistributedDataParallel`` (gloo, 2 CPU processes, ``find_unused_parameters=False`` as nnU-Net
  uses it) with deep supervision on and off;
* nnU-Net's real ``nnUNetPredictor`` rebuilding the network from a model folder written here and
  loading a training checkpoint (tests/nnunet/test_trainers.py already checks the predictor-style
  ``build_network_architecture`` call plus strict ``load_state_dict`` directly).
"""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.blocks.wrapped_nmf import WrappedNMF
from nnunet_deconver.layers import NonnegativeDeconvolution
from nnunet_deconver.layers.nmf import NMF
from support.ddp import (
    DDP_FAMILIES,
    DDP_WORLD_SIZE,
    ddp_training_worker,
    tiny_deconver_2d,
    tiny_factorizer_2d,
    tiny_sum_2d,
)
from support.plans import plans_configuration, predictor_plans

ANISO_KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
ANISO_STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]


def _net_3d(deep_supervision: bool = True, input_channels: int = 2, num_classes: int = 3) -> DeconverUNet:
    """Anisotropic plans: no downsampling along the first axis at level 1, kernel (1, 3, 3) at level 0."""
    return DeconverUNet(input_channels, 4, [8, 16, 32, 64], nn.Conv3d, ANISO_KERNELS_3D, ANISO_STRIDES_3D,
                        num_classes, deep_supervision=deep_supervision)


def _learning_signal_layers(net: nn.Module) -> list[Tensor]:
    """The family-specific weights whose gradients show that the block's core operator learns."""
    ndc = [m.weight for m in net.modules() if isinstance(m, NonnegativeDeconvolution)]
    nmf = [m.project_in.weight for m in net.modules() if isinstance(m, WrappedNMF)]
    return ndc + nmf


# (builder, input shape for the module-by-module comparison, input shape for the backward check).
# 3-D: the strides' product is (2, 8, 8); the comparison uses a 4 x 4 x 4 bottleneck (instance norms
# over very few voxels amplify rounding errors beyond what real patches see), the cheaper backward
# check a 2 x 2 x 2 one.
NETWORKS = {
    "2d": (tiny_deconver_2d, (2, 2, 32, 32), (2, 2, 16, 16)),
    "3d-aniso": (_net_3d, (1, 2, 8, 32, 32), (1, 2, 4, 16, 16)),
    "factorizer-swin-2d": (tiny_factorizer_2d, (2, 2, 32, 32), (2, 2, 16, 24)),
}


def _tensors(output) -> list[Tensor]:
    """The tensors of a module output (a tensor, or nested lists/tuples such as skips or DS outputs)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _ds_loss(outputs: Tensor | list[Tensor], target: Tensor) -> Tensor:
    """nnU-Net-style deep-supervision loss: cross-entropy per output, weights halving per level.

    The targets are downsampled by nearest neighbour to each output's size, as nnU-Net's
    DownsampleSegForDSTransform does. Every weight is non-zero, so every head takes part.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    weights = [0.5**i for i in range(len(outputs))]
    total = sum(weights)
    loss = 0.0
    for weight, out in zip(weights, outputs):
        small = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + weight / total * F.cross_entropy(out.float(), small)
    return loss


# --------------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------------

# Unit roundoff u = 2^-p of each format (p = stored mantissa bits + 1): the relative error of one
# rounding. An output that went through k roundings in a row carries an error of order sqrt(k) * u
# to k * u; instance norms over a few voxels amplify it further. Measured on these nets over several
# seeds: at most ~11 u per module output for both formats (the error scales with u: fp16 errors are
# ~8x smaller than bf16 ones). A tolerance of 16 u therefore keeps a margin while still rejecting
# anything that is not rounding noise (a half-precision overflow, an eps that underflows, a wrong
# dtype cast in the NDC division).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
ROUNDINGS_TOLERATED = 16
HALF_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _record_module_outputs(net: nn.Module, x: Tensor, autocast_dtype: torch.dtype | None) -> dict[str, list[Tensor]]:
    """Run ``net(x)`` (under CPU autocast when a dtype is given) and return every module's output tensors."""
    recorded: dict[str, list[Tensor]] = {}

    def hook_for(name: str):
        def hook(module, inputs, output) -> None:
            recorded[name] = [t.detach().clone() for t in _tensors(output)]

        return hook

    handles = [module.register_forward_hook(hook_for(name or "<network>")) for name, module in net.named_modules()]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                             enabled=autocast_dtype is not None):
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


@functools.lru_cache(maxsize=None)
def _fp32_reference(network: str) -> tuple[nn.Module, Tensor, dict[str, list[Tensor]]]:
    """The network (deep supervision on), its input and every module's fp32 output; shared by both dtypes."""
    build, shape, _ = NETWORKS[network]
    torch.manual_seed(0)
    net = build(deep_supervision=True)
    x = torch.randn(*shape)
    return net, x, _record_module_outputs(net, x, None)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("network", list(NETWORKS))
def test_every_module_under_cpu_autocast_is_finite_and_close_to_fp32(network: str, dtype: torch.dtype) -> None:
    """Every module output (leaf and composite) under autocast is finite and within 16 u of fp32."""
    net, x, reference = _fp32_reference(network)
    half = _record_module_outputs(net, x, dtype)

    # Every module that has a forward pass of its own runs with deep supervision: all but the
    # containers and the NDC layers' internals (which an NDC implementation may use functionally).
    ndc_names = [name for name, module in net.named_modules() if isinstance(module, NonnegativeDeconvolution)]
    nmf_names = [name for name, module in net.named_modules() if isinstance(module, NMF)]
    expected = {
        name or "<network>" for name, module in net.named_modules()
        if not isinstance(module, (nn.ModuleList, nn.ModuleDict)) and not any(name.startswith(n + ".") for n in ndc_names)
    }
    assert (ndc_names or nmf_names) and expected <= set(reference), sorted(expected - set(reference))
    assert set(nmf_names) <= expected
    assert set(half) == set(reference)

    tolerance = ROUNDINGS_TOLERATED * UNIT_ROUNDOFF[dtype]
    failures = []
    for name, outputs in half.items():
        assert len(outputs) == len(reference[name]) > 0, name
        for index, (out, ref) in enumerate(zip(outputs, reference[name])):
            assert out.shape == ref.shape, name
            if not torch.isfinite(out).all():
                failures.append(f"{name}[{index}]: non-finite values under {dtype}")
                continue
            error = (out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)
            if error > tolerance:
                failures.append(f"{name}[{index}] ({out.dtype}): relative error {error:.3g} > {tolerance:.3g}")
    assert not failures, "\n".join(failures)

    # Not vacuous: autocast really ran convolutions in half precision...
    assert any(out.dtype == dtype for outputs in half.values() for out in outputs)
    assert half["encoder.stem"][0].dtype == dtype
    # ... while every NDC layer computed (and returned) float32.
    for name in ndc_names:
        assert half[name][0].dtype == torch.float32, f"{name} returned {half[name][0].dtype} under {dtype} autocast"


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("deep_supervision", [True, False], ids=["ds-on", "ds-off"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_backward_under_cpu_autocast_gives_finite_gradients(network: str, deep_supervision: bool,
                                                            dtype: torch.dtype) -> None:
    """A training step's backward pass under autocast reaches every parameter with finite float32 gradients."""
    build, _, shape = NETWORKS[network]
    torch.manual_seed(1)
    net = build(deep_supervision=deep_supervision)
    x = torch.randn(*shape)
    target = torch.randint(0, 3, (shape[0], *shape[2:]))
    with torch.autocast("cpu", dtype=dtype):
        outputs = net(x)
        loss = _ds_loss(outputs, target)
    assert torch.isfinite(loss), f"non-finite loss under {dtype} autocast"
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient under {dtype} autocast"
    core = _learning_signal_layers(net)
    assert core and all(w.grad.abs().sum() > 0 for w in core), "the NDC / NMF layers get no learning signal"


# --------------------------------------------------------------------------------------------------
# torch.compile (inductor, CPU)
# --------------------------------------------------------------------------------------------------

COMPILE_TOLERANCE = 1e-4  # max abs difference; the logits here are of order 1


def _max_abs_diff(a, b) -> float:
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb)
    return max((x - y).abs().max().item() for x, y in zip(ta, tb))


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_deconver_2d, tiny_factorizer_2d, tiny_sum_2d],
                         ids=["deconver", "factorizer-swin", "sum"])
def test_inductor_compiled_2d_training_step_matches_eager_with_deep_supervision_toggled(build) -> None:
    """Compiled forward and backward equal eager; toggling decoder.deep_supervision recompiles."""
    torch._dynamo.reset()
    torch.manual_seed(2)
    net = build(deep_supervision=True, input_channels=1, num_classes=2)
    compiled = torch.compile(net, backend="inductor")
    x = torch.randn(2, 1, 16, 24)
    target = torch.randint(0, 2, (2, 16, 24))
    for deep_supervision in (True, False, True):
        net.decoder.deep_supervision = deep_supervision
        results = {}
        for name, model in (("eager", net), ("compiled", compiled)):
            net.zero_grad(set_to_none=True)
            outputs = model(x)
            _ds_loss(outputs, target).backward()
            results[name] = (outputs, {n: p.grad.clone() for n, p in net.named_parameters()})
        (eager_out, eager_grads), (compiled_out, compiled_grads) = results["eager"], results["compiled"]
        if deep_supervision:
            assert isinstance(compiled_out, list) and len(compiled_out) == 2
        else:
            assert isinstance(compiled_out, Tensor), "the compiled graph ignored the deep-supervision toggle"
        assert max(t.abs().max().item() for t in _tensors(eager_out)) > 0.1  # the scale 1e-4 refers to
        assert _max_abs_diff(compiled_out, eager_out) <= COMPILE_TOLERANCE
        for name, grad in eager_grads.items():
            scale = max(grad.abs().max().item(), 1e-3)
            diff = (compiled_grads[name] - grad).abs().max().item()
            assert diff <= COMPILE_TOLERANCE * scale, f"{name}: gradient differs by {diff:.3g} (scale {scale:.3g})"
    torch._dynamo.reset()


def test_factorizer_compiles_into_one_graph_without_breaks() -> None:
    """torch.compile sees the whole Factorizer as one graph: a graph break inside the NMF layer (the
    seeded initial factors) made dynamo recompile the rest per layer with dynamic shapes, which
    inductor then failed to lower ("cannot determine truth value of Relational"). Tracing only, fast."""
    torch._dynamo.reset()
    net = tiny_factorizer_2d(deep_supervision=True, input_channels=1, num_classes=2)
    explanation = torch._dynamo.explain(net)(torch.randn(1, 1, 16, 24))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_compiled_3d_inference_matches_eager_with_deep_supervision_toggled() -> None:
    """Anisotropic 3-D net, inference as the predictor runs it (DS off), then DS on: compiled == eager."""
    torch._dynamo.reset()
    torch.manual_seed(3)
    net = _net_3d(deep_supervision=False, input_channels=1, num_classes=2).eval()
    compiled = torch.compile(net, backend="inductor")
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.inference_mode():
        for deep_supervision in (False, True):
            net.decoder.deep_supervision = deep_supervision
            eager_out, compiled_out = net(x), compiled(x)
            assert isinstance(compiled_out, list) == deep_supervision
            assert max(t.abs().max().item() for t in _tensors(eager_out)) > 0.1
            assert _max_abs_diff(compiled_out, eager_out) <= COMPILE_TOLERANCE
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------
# DistributedDataParallel (gloo, 2 CPU processes)
# --------------------------------------------------------------------------------------------------

def test_ddp_gloo_two_processes_train_in_sync_with_deep_supervision_on_and_off(tmp_path) -> None:
    """find_unused_parameters=False: steps run with DS on and off; both ranks end with identical, updated weights.

    One spawn covers both modes and both families, Deconver and a Swin Factorizer (starting processes
    dominates the cost). A rank failing, e.g. DDP's "parameters that were not used in producing loss"
    error, fails the test.
    """
    init_method = f"file://{tmp_path / 'rendezvous'}"  # no port to race for
    mp.spawn(ddp_training_worker, args=(DDP_WORLD_SIZE, init_method, str(tmp_path)), nprocs=DDP_WORLD_SIZE,
             join=True)
    for family, deep_supervision in itertools.product(DDP_FAMILIES, (1, 0)):
        results = [torch.load(tmp_path / f"{family}_ds{deep_supervision}_rank{rank}.pt")
                   for rank in range(DDP_WORLD_SIZE)]
        for result in results:
            assert not result["grads_missing"], result["grads_missing"]
            assert all(np.isfinite(result["losses"]))
        assert results[0]["losses"] != results[1]["losses"], "the ranks should have trained on different data"
        assert torch.equal(results[0]["initial"], results[1]["initial"])
        assert torch.equal(results[0]["final"], results[1]["final"]), "the ranks' weights diverged"
        assert not torch.equal(results[0]["final"], results[0]["initial"]), "the optimizer steps changed nothing"


# --------------------------------------------------------------------------------------------------
# nnU-Net's real predictor on a model folder written here
# --------------------------------------------------------------------------------------------------

PATCH_3D = [8, 16, 16]


def _plans() -> dict:
    """A plans.json as nnU-Net 2.8 writes it: one anisotropic 3d_fullres configuration."""
    return predictor_plans(plans_configuration(3, patch=PATCH_3D), dataset_name="Dataset999_Robustness")


DATASET_JSON = {
    "channel_names": {"0": "MRI"},
    "labels": {"background": 0, "lesion": 1, "edema": 2},
    "numTraining": 5,
    "file_ending": ".nii.gz",
}


def _write_model_folder(folder, trained: nn.Module, plans: dict) -> None:
    """plans.json, dataset.json and fold_0/checkpoint_final.pth with the keys nnUNetTrainer.save_checkpoint writes."""
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    checkpoint = {
        "network_weights": trained.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": None,
        "_best_ema": None,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": DATASET_JSON,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerDeconver",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


def test_nnunet_predictor_rebuilds_and_loads_a_deconver_checkpoint(tmp_path, monkeypatch) -> None:
    """nnUNetPredictor finds the trainer by name, rebuilds without DS, loads strictly, predicts like training."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_deconver.nnunet.trainers import nnUNetTrainerDeconver

    monkeypatch.delenv("nnUNet_compile", raising=False)  # the predictor would compile even on CPU
    plans = _plans()
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration("3d_fullres")
    torch.manual_seed(4)
    trained = nnUNetTrainerDeconver.build_network_architecture(
        plans_manager, configuration_manager, 1, 3, enable_deep_supervision=True
    )
    with torch.no_grad():  # make the checkpoint differ from any fresh initialisation
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    _write_model_folder(tmp_path / "model", trained, plans)

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=False, use_mirroring=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(tmp_path / "model"), use_folds=(0,))
    network = predictor.network
    assert type(network) is DeconverUNet
    assert network.decoder.deep_supervision is False
    assert predictor.trainer_name == "nnUNetTrainerDeconver"
    for name, tensor in trained.state_dict().items():
        assert torch.equal(network.state_dict()[name], tensor), name
    # initialize_from_trained_model_folder already used a plain (strict) load_state_dict; so does every
    # prediction. A head built only with deep supervision would raise there.
    result = network.load_state_dict(predictor.list_of_parameters[0], strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # A case of exactly one patch, no zero voxels (no cropping), native spacing (no resampling), no
    # mirroring: the probabilities are softmax(training network's full-resolution output on the
    # z-scored image), up to the fp16 in which nnU-Net accumulates logits.
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((1, *PATCH_3D)) + 5.0).astype(np.float32)
    segmentation, probabilities = predictor.predict_single_npy_array(
        image, {"spacing": [3.0, 1.0, 1.0]}, None, None, save_or_return_probabilities=True
    )
    normalized = (image - image.mean()) / image.std()
    trained.eval()
    with torch.no_grad():
        expected = torch.softmax(trained(torch.from_numpy(normalized)[None])[0][0].double(), dim=0).numpy()
    assert probabilities.shape == (3, *PATCH_3D) and segmentation.shape == tuple(PATCH_3D)
    assert np.ptp(expected) > 0.05, "the comparison needs probabilities that are not all uniform"
    np.testing.assert_allclose(probabilities, expected, atol=2e-3)
    np.testing.assert_array_equal(segmentation, probabilities.argmax(0))

    # Sliding window over a larger case with mirroring and Gaussian weighting: runs, finite, right shape.
    predictor.use_mirroring, predictor.use_gaussian = True, True
    data = torch.from_numpy(rng.standard_normal((1, 8, 24, 16)).astype(np.float32))  # 2 tiles x 8 mirrorings
    logits = predictor.predict_logits_from_preprocessed_data(data)
    assert logits.shape == (3, 8, 24, 16)
    assert torch.isfinite(logits).all()
