"""The SUM paper's training recipe in nnU-Net's terms (papers/segmentation-cnns-are-denoising-models.md,
section 4 and Appendix D, with what the facts sheet sum-facts.md settles: "Training recipe").

* :class:`SoftIoULoss`: 1 - sum(p t) / (sum(p + t - p t) + 5), sums over every voxel of the batch;
* :class:`ReconstructionRegularisedLoss`: the SUM_Rec objective, + lambda mean|x - ED_{alpha=0}(x)|;
* :class:`PaperLinearDecay`: lr_e = lr0 (1 - (e - 1) / E) per epoch (e = 0 .. E - 1, as the authors' loop);
* :func:`clip_before_every_step`: gradient-norm clipping at 1e-3 before every optimiser step;
* :func:`paper_training_transforms`: horizontal flips (p = 0.5) and rot90 by 0 / 90 / 180 degrees (p = 0.5),
  in plane, instead of nnU-Net's augmentation, keeping nnU-Net's label bookkeeping transforms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.rot90 import Rot90Transform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_deconver.architectures.sum_network import PaperOutputLayer, SUMNet
from nnunet_deconver.layers.shrinkage import shrinkage_scale

SOFT_IOU_SMOOTHING = 5.0
# nnU-Net's transforms that only convert labels (no augmentation); the paper recipe keeps them.
LABEL_BOOKKEEPING = (MaskImageTransform, RemoveLabelTansform, ConvertSegmentationToRegionsTransform,
                     DownsampleSegForDSTransform)


def sum_network_in(network: nn.Module) -> SUMNet:
    """The SUMNet inside ``network`` (also through DistributedDataParallel / torch.compile wrappers)."""
    found = next((module for module in network.modules() if isinstance(module, SUMNet)), None)
    if found is None:
        raise ValueError(f"{type(network).__name__} is not a SUM network; this needs a SUMNet (nnUNetTrainerSUM).")
    return found


def soft_iou_loss(probability: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """1 - sum(p t) / (sum(p + t - p t) + 5), summed over the whole batch (the paper's soft IoU)."""
    if valid is not None:
        probability, target = probability * valid, target * valid
    intersection = (probability * target).sum()
    return 1.0 - intersection / ((probability + target).sum() - intersection + SOFT_IOU_SMOOTHING)


class SoftIoULoss(nn.Module):
    """The paper's soft IoU on nnU-Net's (logits, label map) pair.

    Binary tasks with the paper's output layer: p = m^, the clamped map (the second logit). Otherwise
    p = softmax(logits) and the loss is the mean over the foreground classes. Voxels with nnU-Net's
    ignore label do not count.
    """

    def __init__(self, network: SUMNet, *, ignore_label: int | None) -> None:
        super().__init__()
        self.paper_output = isinstance(network.output_layer, PaperOutputLayer)
        self.ignore_label = ignore_label

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        valid = None if self.ignore_label is None else (target != self.ignore_label).float()
        if self.paper_output:
            return soft_iou_loss(logits[:, 1:2], (target == 1).float(), valid)
        probabilities = logits.softmax(dim=1)
        losses = [soft_iou_loss(probabilities[:, c:c + 1], (target == c).float(), valid)
                  for c in range(1, logits.shape[1])]
        return torch.stack(losses).mean()


class ReconstructionRegularisedLoss(nn.Module):
    """SUM_Rec: segmentation loss + lambda mean|x - ED_{alpha=0}(x)| (section 4, lambda = 0.35).

    x is the input of the network's last forward call (:meth:`remember_input`, registered as a forward
    pre-hook on the trained network); the ED runs a second time on it with every shrinkage at alpha = 0.
    """

    def __init__(self, segmentation_loss: nn.Module, network: SUMNet, *, weight: float) -> None:
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.network = [network]  # a list: not a submodule of the loss
        self.weight = weight
        self.last_input: Tensor | None = None

    def remember_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.last_input = args[0]

    def reconstruction_error(self, x: Tensor) -> Tensor:
        network = self.network[0]
        with shrinkage_scale(network, 0.0):
            return (x - network.encoder_decoder(x)).abs().float().mean()

    def forward(self, output: Any, target: Any) -> Tensor:
        if self.last_input is None:
            raise RuntimeError("ReconstructionRegularisedLoss needs the network's input: register remember_input "
                               "as a forward pre-hook of the network.")
        return self.segmentation_loss(output, target) + self.weight * self.reconstruction_error(self.last_input)


class PaperLinearDecay(_LRScheduler):
    """lr = lr0 (1 - (e - 1) / E) at epoch e = 0 .. E - 1: lr0 (E + 1) / E first, 2 lr0 / E last.

    The authors set the rate once per epoch this way (E = 300: from 1.003 lr0 to lr0 / 150); nnU-Net
    steps its scheduler with the epoch at the start of each one.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, max_steps: int) -> None:
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: int) -> float:
        return self.initial_lr * (1.0 - (epoch - 1) / self.max_steps)

    def get_lr(self) -> list[float]:
        return [self.lr_at(max(self.last_epoch, 0)) for _ in self.optimizer.param_groups]

    def step(self, current_step: int | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if current_step is None else current_step
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def clip_before_every_step(optimizer: Optimizer, parameters: Callable[[], Any], max_norm: float) -> None:
    """Clip the gradient norm to ``max_norm`` right before each ``optimizer.step()``.

    nnU-Net's train step clips at 12 first (and unscales fp16 gradients before it); clipping again at the
    paper's 1e-3 gives the paper's clipping, since clipping only ever scales down.
    """

    def clip(_optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        torch.nn.utils.clip_grad_norm_(parameters(), max_norm)

    optimizer.register_step_pre_hook(clip)


def paper_training_transforms(
    patch_size: tuple[int, ...], nnunet_transforms: ComposeTransforms
) -> ComposeTransforms:
    """Flip along the last axis (p = 0.5) and rot90 in the last two axes by 0 / 90 / 180 degrees (p = 0.5).

    A non-square in-plane patch rotates by 0 or 180 degrees only (90 would change its shape). nnU-Net's
    label bookkeeping (:data:`LABEL_BOOKKEEPING`) follows, as nnU-Net built it for this dataset.
    """
    spatial_dims = len(patch_size)
    rows, columns = spatial_dims - 2, spatial_dims - 1
    square = patch_size[rows] == patch_size[columns]
    augmentation: list[BasicTransform] = [
        MirrorTransform(allowed_axes=(columns,)),
        RandomTransform(
            Rot90Transform(num_axis_combinations=1, num_rot_per_combination=(0, 1, 2) if square else (0, 2),
                           allowed_axes={rows, columns}),
            apply_probability=0.5,
        ),
    ]
    bookkeeping = [t for t in nnunet_transforms.transforms if isinstance(t, LABEL_BOOKKEEPING)]
    return ComposeTransforms(augmentation + bookkeeping)
