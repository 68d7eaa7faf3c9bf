"""The ``nnunet-deconver impulse`` sub-command's arguments; the work is :mod:`~nnunet_deconver.analysis.impulse_report`.

Kept free of torch and nnU-Net imports so that ``nnunet-deconver -h`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Impulse and frequency response of a trained model folder (one fold), with the spread and variation "
    "metrics SDS, FDS and FDV (papers/segmentation-cnns-are-denoising-models.md, Appendices B and C, Fig. 3). "
    "For a SUM: the exact impulse response of its encoder-decoder at alpha = 0, on a zero input larger than its "
    "receptive field, cropped to --size. For any other model: the response of its linearisation, the Jacobian of "
    "the pre-softmax logits at the image's patch (-i) or at the zero image, on the plans' patch (the network is "
    "not linear: this describes it around that input only). Computed in float64; writes impulse.json, "
    "impulse_response.png and, for a SUM with -i, signal_flow.png (Fig. 2: input, ED at alpha = 0 and 1, "
    "prediction, label). Existing files are never replaced."
)


def add_impulse_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``impulse`` to the ``nnunet-deconver`` sub-commands (run it with :func:`run_impulse`)."""
    parser = subparsers.add_parser(
        "impulse", description=DESCRIPTION,
        help="impulse and frequency response of a trained model (exact for SUM, a linearisation otherwise), "
        "SDS/FDS/FDV, figures like the SUM paper's Fig. 2 and 3",
    )
    parser.add_argument("-m", "--model-folder", type=Path, required=True,
                        help="nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="folder for impulse.json and the PNGs (created; files already there are never replaced)")
    parser.add_argument("-f", "--fold", default="0", help="fold whose weights to use (default: 0)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to compute, in float64 (default: cpu)")
    parser.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="crop of the response, one value or one per axis (default: 128 in 2-D as in the paper, "
                        "64 in 3-D); for models other than SUM at most the plans' patch (larger values are clipped)")
    parser.add_argument("-i", "--image", type=Path, nargs="+", default=[],
                        help="an image's files, one per channel (CASE_0000.nii.gz ...): the input the response of a "
                        "model other than SUM is linearised around (default: the zero image), and for a SUM the "
                        "signal-flow figure")
    parser.add_argument("-l", "--label", type=Path, help="with -i: the image's label file, shown in the signal flow")
    parser.add_argument("--slice", type=int, help="with -i: index along the image's first axis (default: the middle)")
    parser.add_argument("--alpha", type=float, metavar="A",
                        help="SUM only: the shrinkage scale (default 0: the exact response); another value gives "
                        "the linearisation of the encoder-decoder at that alpha around -i or the zero image")
    parser.add_argument("--channel", type=int, default=0, metavar="C", help="input channel of the delta (default: 0)")
    parser.add_argument("--class", dest="output_channel", type=int, metavar="K",
                        help="output channel whose response is reported: the logit channel, or for a SUM the "
                        "encoder-decoder channel (default: 1, the first foreground class; a SUM whose "
                        "encoder-decoder has the input's channels: the --channel itself)")


def run_impulse(args: argparse.Namespace) -> None:
    """Run ``nnunet-deconver impulse`` with parsed ``args`` and print what it computed and wrote.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: with a one-line message for the user.
    """
    from nnunet_deconver.analysis.impulse_report import ImpulseRequest, impulse_report

    request = ImpulseRequest(
        args.model_folder, args.output, fold=args.fold, checkpoint=args.checkpoint, device=args.device,
        size=tuple(args.size or ()), image=tuple(args.image), label=args.label, slice_index=args.slice,
        alpha=args.alpha, input_channel=args.channel, output_channel=args.output_channel,
    )
    for line in impulse_report(request, progress=print):
        print(line)
