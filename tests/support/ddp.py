"""The DDP worker of the robustness tests, importable by nnU-Net-style "spawn" child processes.

Child processes unpickle the worker by its module name, so it lives here (``support`` is on the
path pytest gives them) rather than in a test module.
"""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_deconver.architectures import DeconverUNet
from nnunet_deconver.architectures.factorizer_unet import FactorizerUNet
from nnunet_deconver.architectures.sum_network import SUMNet


def tiny_deconver_2d(deep_supervision: bool = True, input_channels: int = 2, num_classes: int = 3) -> DeconverUNet:
    return DeconverUNet(input_channels, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], num_classes,
                        deep_supervision=deep_supervision, ndc_kernel_size=5)


def tiny_factorizer_2d(deep_supervision: bool = True, input_channels: int = 2, num_classes: int = 3) -> FactorizerUNet:
    """A small Swin Factorizer: E = 4, window 4 (padded windows at 16 x 24 / 2), embedding for 32 x 32."""
    return FactorizerUNet(input_channels, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], num_classes,
                          deep_supervision=deep_supervision, matricize="swin", head_dim=4, window=4,
                          patch_size=(32, 32))


def tiny_sum_2d(deep_supervision: bool = True, input_channels: int = 2, num_classes: int = 3) -> SUMNet:
    return SUMNet(input_channels, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], num_classes,
                  deep_supervision=deep_supervision)


DDP_WORLD_SIZE = 2
DDP_STEPS = 2  # DDP reports parameters without a gradient only when the next forward starts


def _flat_parameters(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _nnunet_ddp_loss(deep_supervision: bool, n_outputs: int) -> nn.Module:
    """The loss structure nnUNetTrainer._build_loss gives under DDP without torch.compile (CE part only).

    With deep supervision: DeepSupervisionWrapper, weights 1/2^i, the lowest set to 1e-6 (not 0,
    which nnU-Net reserves for non-DDP or compiled runs), normalised. Without: the plain loss.
    """
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

    if not deep_supervision:
        return RobustCrossEntropyLoss()
    weights = np.array([1 / 2**i for i in range(n_outputs)])
    weights[-1] = 1e-6
    return DeepSupervisionWrapper(RobustCrossEntropyLoss(), weights / weights.sum())


DDP_FAMILIES = {"deconver": tiny_deconver_2d, "factorizer-swin": tiny_factorizer_2d, "sum": tiny_sum_2d}


def ddp_training_worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    """One DDP rank: nnU-Net's wrapping, toggling and loss, a few SGD steps on this rank's own data.

    For each family and deep supervision on, then off, a fresh network (same seed on every rank) is wrapped like
    nnUNetTrainer does (``find_unused_parameters`` left False), the flag is set through
    ``.module.decoder`` like ``set_deep_supervision_enabled`` does, and DDP_STEPS steps run.
    Module level so that the "spawn" start method can pickle it.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        for (family, build), deep_supervision in itertools.product(DDP_FAMILIES.items(), (True, False)):
            torch.manual_seed(0)
            net = build(deep_supervision=True, input_channels=1, num_classes=2)
            with torch.no_grad():
                n_outputs = len(net(torch.zeros(1, 1, 16, 16)))
            initial = _flat_parameters(net).clone()
            ddp = nn.parallel.DistributedDataParallel(net, find_unused_parameters=False)
            ddp.module.decoder.deep_supervision = deep_supervision
            optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
            loss_fn = _nnunet_ddp_loss(deep_supervision, n_outputs)
            generator = torch.Generator().manual_seed(1000 + rank)  # different data per rank
            losses = []
            for _ in range(DDP_STEPS):
                x = torch.randn(2, 1, 16, 16, generator=generator)
                target = (x[:, :1] > 0).float()  # nnU-Net's targets: (b, 1, *spatial), float
                optimizer.zero_grad(set_to_none=True)
                outputs = ddp(x)
                assert isinstance(outputs, list) == deep_supervision
                if deep_supervision:  # targets downsampled to each output, as nnU-Net's DS transform does
                    targets = [F.interpolate(target, size=o.shape[2:], mode="nearest") for o in outputs]
                    loss = loss_fn(outputs, targets)
                else:
                    loss = loss_fn(outputs, target)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            torch.save({"initial": initial, "final": _flat_parameters(net), "losses": losses,
                        "grads_missing": [n for n, p in net.named_parameters() if p.grad is None]},
                       os.path.join(out_dir, f"{family}_ds{int(deep_supervision)}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
