"""The authors' released 2-D SUM weights in a :class:`SUMNet` (papers/segmentation-cnns-are-denoising-models.md).

Their state dict (the facts sheet, sum-facts.md: "Released weights' layout") has 41 tensors for
depth 4: ``enc.{l}.c1/c2.weight`` and ``enc.{l}.s1/s2.t`` (l = 0 .. 3), ``dl.c1/c2.weight`` and
``dl.s1/s2.t`` (the bottleneck), ``dec.{l}.c1.weight`` (conv_a, on the IDWT output),
``dec.{l}.c12.weight`` (conv_b, on the skip), ``dec.{l}.c2.weight`` (conv_c, narrowing),
``dec.{l}.s1/s2.t`` and ``ol.out.weight``; thresholds are (C, 1, 1). The same layout at another depth
maps the same way. The network must be the paper's: bias-free output layer ``'paper'``, no
deep-supervision heads, the authors' shrinkage leaks (the ``sum-paper-2d`` preset).

The authors' Haar pairs samples (2i - 1, 2i) (they pad one sample first), this package's (2i, 2i + 1):
with the same weights the two networks agree on inputs shifted by one sample along each axis (away
from the borders), which is how the impulse protocol reproduces their numbers (analysis/impulse.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from nnunet_deconver.architectures.sum_network import PaperOutputLayer, SUMNet
from nnunet_deconver.layers.shrinkage import AUTHORS_LEAKS, shrinkage_modules


def authors_key_map(network: SUMNet) -> dict[str, str]:
    """The authors' state-dict key of every parameter of ``network`` (our key -> theirs)."""
    pairs = {"conv1.conv.weight": "c1.weight", "conv2.conv.weight": "c2.weight", "shrink1.threshold": "s1.t",
             "shrink2.threshold": "s2.t"}
    mapping: dict[str, str] = {}
    for level in range(len(network.encoder.levels)):
        mapping |= {f"encoder.levels.{level}.{ours}": f"enc.{level}.{theirs}" for ours, theirs in pairs.items()}
    mapping |= {f"encoder.bottleneck.{ours}": f"dl.{theirs}" for ours, theirs in pairs.items()}
    decoder_pairs = {"conv_up.conv.weight": "c1.weight", "conv_skip.conv.weight": "c12.weight",
                     "conv_narrow.conv.weight": "c2.weight", "shrink1.threshold": "s1.t", "shrink2.threshold": "s2.t"}
    deepest = len(network.decoder.levels) - 1
    for index in range(len(network.decoder.levels)):  # built deepest first; the authors number by level
        mapping |= {f"decoder.levels.{index}.{ours}": f"dec.{deepest - index}.{theirs}"
                    for ours, theirs in decoder_pairs.items()}
    mapping["output_layer.out.weight"] = "ol.out.weight"
    return mapping


def _check_paper_network(network: SUMNet) -> None:
    problems = []
    if not isinstance(network.output_layer, PaperOutputLayer) or network.output_layer.out.bias is not None:
        problems.append("a bias-free 'paper' output layer")
    if len(network.decoder.heads):
        problems.append("no deep-supervision heads")
    if any(module.leaks != AUTHORS_LEAKS for module in shrinkage_modules(network)):
        problems.append(f"shrinkage leaks {AUTHORS_LEAKS}")
    if problems:
        raise ValueError(f"The authors' weights need the paper's SUM ({', '.join(problems)}); build it with the "
                         f"sum-paper-2d preset.")


def authors_state_dict(source: Path | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """The authors' state dict from a ``.pt``/``.pth`` file (read with ``weights_only=True``) or as given."""
    if isinstance(source, Mapping):
        return source
    if not Path(source).is_file():
        raise FileNotFoundError(f"{source} does not exist; give the path of the authors' SUM weights file.")
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{source} holds a {type(loaded).__name__}, not a state dict of tensors.")
    return loaded


def load_authors_weights(network: SUMNet, source: Path | Mapping[str, Tensor]) -> None:
    """Copy the authors' SUM weights into ``network`` (every parameter, checked key by key and shape by shape).

    Raises:
        ValueError: the network is not the paper's SUM, or keys are missing / unexpected, or a shape differs
            (the depth or widths differ from the network's).
    """
    _check_paper_network(network)
    theirs = authors_state_dict(source)
    mapping = authors_key_map(network)
    missing = sorted(set(mapping.values()) - set(theirs))
    unexpected = sorted(set(theirs) - set(mapping.values()))
    if missing or unexpected:
        raise ValueError(f"The weights do not match this SUM's layout: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]} ({len(missing)} / {len(unexpected)}); check the network's depth.")
    ours = network.state_dict()
    converted = {}
    for key, their_key in mapping.items():
        value = theirs[their_key].reshape(-1) if key.endswith("threshold") else theirs[their_key]
        if value.shape != ours[key].shape:
            raise ValueError(f"{their_key} has shape {tuple(theirs[their_key].shape)} but {key} needs "
                             f"{tuple(ours[key].shape)}; the widths or depth differ from the network's.")
        converted[key] = value.to(ours[key].dtype)
    network.load_state_dict(converted)
