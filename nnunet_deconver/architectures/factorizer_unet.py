"""Factorizer U-Nets: papers/factorizer.md section 3.2 (Fig. 1) with the blocks of section 3.3.

Global, Local and Swin (shifted-window) Factorizer differ only in the Matricize of their NMF layers.
The topology comes from nnU-Net's plans (any number of stages, anisotropic strides): stem
convolution, strided convolutions down, transposed convolutions up, skip concatenation fused by a
pointwise convolution, Factorizer blocks at every level, and a learnable positional embedding added
at the start of the bridge, sized from the plans' patch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.architectures.hyperparameter_checks import (
    check_choice,
    check_divides_every_stage,
    check_flag,
    check_integer,
    check_some_branch,
    invalid,
    per_axis,
)
from nnunet_deconver.architectures.registry import register_architecture
from nnunet_deconver.architectures.unet_scaffold import StageSpec, UNetScaffold, stage_features
from nnunet_deconver.blocks.factorizer_block import FactorizerBlock
from nnunet_deconver.blocks.wrapped_nmf import WrappedNMF
from nnunet_deconver.layers.matricize import MATRICIZE_KINDS, MatricizeKind
from nnunet_deconver.layers.nmf import SOLVERS, Solver, check_nmf_settings
from nnunet_deconver.layers.positional_embedding import PositionalEmbedding


@register_architecture(from_plans_configuration=("patch_size",))
class FactorizerUNet(UNetScaffold):
    """U-shaped Factorizer built from nnU-Net plans quantities.

    Every hyper-parameter is checked before anything is built; a bad one raises a one-line
    ValueError naming it, its value and a valid example.

    Args (beyond :class:`UNetScaffold`'s topology arguments):
        matricize: "global", "local" or "swin" (Global / Local / Swin Factorizer).
        head_dim: E, channels per NMF matrix (8 for the paper's BraTS model, 4 for ISLES'22).
        window: P, window per axis for local / swin (8 for BraTS, 4 for ISLES'22); at most the patch
            size (deeper, smaller feature maps clamp it to their size).
        nmf_rank, nmf_iterations, nmf_solver: R, T and the solver of every NMF layer.
        mlp_ratio: MLP inner width over C (2 for BraTS, 4 for ISLES'22).
        use_nmf, use_mlp: block ablations (Table 3).
        patch_size: the training patch size; with ``positional_embedding`` it sizes the bridge's
            embedding (patch size / product of the strides). ``None`` builds no embedding.
        positional_embedding: add the learnable embedding in the bridge (Table 4).
        **scaffold_options: :class:`UNetScaffold`'s options: deep_supervision, blocks_per_stage,
            blocks_per_decoder_stage, dtc (DTC upsampling, papers/dtc.md), stem_bias,
            downsampling_bias, fusion_bias; the authors' code has none of these biases, and the
            paper presets turn them off.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[_ConvNd],
        kernel_sizes: int | Sequence,
        strides: int | Sequence,
        num_classes: int,
        *,
        matricize: MatricizeKind = "swin",
        head_dim: int = 8,
        window: int | Sequence[int] = 8,
        nmf_rank: int = 1,
        nmf_iterations: int = 5,
        nmf_solver: Solver = "hals",
        mlp_ratio: int = 2,
        use_nmf: bool = True,
        use_mlp: bool = True,
        patch_size: Sequence[int] | None = None,
        positional_embedding: bool = True,
        **scaffold_options: Any,
    ) -> None:
        spatial_dims = convert_conv_op_to_dim(conv_op)
        check_choice("matricize", matricize, MATRICIZE_KINDS, "swin")
        check_integer("head_dim", head_dim, minimum=1, meaning="the head dimension E", example=8)
        check_divides_every_stage(
            "head_dim", head_dim, stage_features(features_per_stage, n_stages), "the head dimension E", preferred=8
        )
        _check_window(window, patch_size, spatial_dims, windowed=matricize != "global")
        check_integer("nmf_rank", nmf_rank, minimum=1, meaning="the NMF rank R", example=1)
        check_integer("nmf_iterations", nmf_iterations, minimum=0, meaning="the NMF iterations T", example=5)
        check_choice("nmf_solver", nmf_solver, SOLVERS, "hals")
        check_integer("mlp_ratio", mlp_ratio, minimum=1, meaning="the MLP inner width over C", example=2)
        check_some_branch("Factorizer", {"use_nmf": use_nmf, "use_mlp": use_mlp})
        check_flag("positional_embedding", positional_embedding)
        bridge_level = n_stages - 1
        bridge_size = _bridge_size(patch_size, strides, n_stages) if patch_size is not None else ()
        needs_embedding = [positional_embedding and patch_size is not None]

        def block_factory(spec: StageSpec) -> nn.Module:
            block = FactorizerBlock(
                spec.channels,
                conv_op,
                matricize=matricize,
                head_dim=head_dim,
                window=window,
                rank=nmf_rank,
                iterations=nmf_iterations,
                solver=nmf_solver,
                mlp_ratio=mlp_ratio,
                use_nmf=use_nmf,
                use_mlp=use_mlp,
            )
            if spec.level == bridge_level and needs_embedding[0]:
                needs_embedding[0] = False
                return nn.Sequential(PositionalEmbedding(spec.channels, size=bridge_size), block)
            return block

        super().__init__(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes,
            block_factory=block_factory, **scaffold_options,
        )

    def nmf_layers(self) -> list[WrappedNMF]:
        """The Wrapped NMF modules in the paper's numbering order (Fig. 8): encoder from the highest
        resolution to the bridge, then decoder from the deepest stage up."""
        return [layer for _, layer in self.labelled_nmf_layers()]

    def labelled_nmf_layers(self) -> list[tuple[str, WrappedNMF]]:
        """:meth:`nmf_layers` with where each sits, e.g. ("encoder level 0", layer), ("bridge", layer)."""
        bridge = len(self.encoder.stages) - 1
        labelled = []
        for level, stage in enumerate(self.encoder.stages):
            name = "bridge" if level == bridge else f"encoder level {level}"
            labelled += [(name, m) for m in stage.modules() if isinstance(m, WrappedNMF)]
        for index, stage in enumerate(self.decoder.stages):
            labelled += [(f"decoder level {bridge - 1 - index}", m) for m in stage.modules() if isinstance(m, WrappedNMF)]
        return labelled

    def configure_nmf(
        self,
        iterations: int | None = None,
        rank: int | None = None,
        solver: Solver | None = None,
        skip_layers: Sequence[int] = (),
    ) -> None:
        """Inference-time knobs of section 4.5, applied to a (trained) network without retraining.

        Args:
            iterations, rank, solver: new T, R, solver for every NMF layer (``None`` keeps it).
            skip_layers: 1-based indices into :meth:`nmf_layers` whose NMF is short-circuited; every
                other layer is (re)enabled.

        Raises:
            ValueError: an index out of range, or an invalid T / R / solver.
        """
        layers = self.nmf_layers()
        bad = sorted(i for i in skip_layers if not 1 <= i <= len(layers))
        if bad:
            raise ValueError(f"NMF layer(s) {bad} do not exist; this network has layers 1..{len(layers)}.")
        check_nmf_settings(rank, iterations, solver)
        for index, layer in enumerate(layers, start=1):
            layer.nmf_enabled = index not in skip_layers
            layer.nmf.iterations = layer.nmf.iterations if iterations is None else iterations
            layer.nmf.rank = layer.nmf.rank if rank is None else rank
            layer.nmf.solver = layer.nmf.solver if solver is None else solver


def _check_window(
    window: int | Sequence[int], patch_size: Sequence[int] | None, spatial_dims: int, *, windowed: bool
) -> None:
    """P >= 1 per axis and, for local / swin with a known patch, no larger than the patch (one-line errors).

    Deeper feature maps smaller than P are fine: Matricize clamps the window to their size.
    """
    windows = per_axis("window", window, spatial_dims, valid=lambda p: p >= 1, rule="windows must be >= 1",
                       example="8")
    if patch_size is None:
        return
    patch = per_axis("patch_size", patch_size, spatial_dims, valid=lambda n: n >= 1,
                     rule="patch sizes must be >= 1", example=str([64] * spatial_dims))
    if windowed and any(p > n for p, n in zip(windows, patch)):
        fitting = [min(p, n) for p, n in zip(windows, patch)]
        raise invalid("window", window, f"windows must fit in the patch {list(patch)}", str(fitting))


def _bridge_size(patch_size: Sequence[int], strides: int | Sequence, n_stages: int) -> tuple[int, ...]:
    """Spatial size at the bottleneck for the patch: patch // product of the strides, per axis."""
    stride_list = [strides] * n_stages if isinstance(strides, int) else list(strides)
    size = list(patch_size)
    for stride in stride_list:
        per_axis = [stride] * len(size) if isinstance(stride, int) else list(stride)
        size = [n // s for n, s in zip(size, per_axis)]
    if any(n < 1 for n in size):
        raise ValueError(f"Patch size {tuple(patch_size)} is too small for strides {stride_list}.")
    return tuple(size)

