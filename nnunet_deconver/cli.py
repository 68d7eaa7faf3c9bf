"""The ``nnunet-deconver`` command: thin argument parsing on top of the package's tiers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_deconver.analysis.impulse_cli import add_impulse_parser, run_impulse
from nnunet_deconver.analysis.robustness_cli import add_robustness_parser, run_robustness


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_deconver.nnunet.demo.defaults import DEMO_CONFIGURATIONS, DEMO_TRAINERS

    parser = subparsers.add_parser(
        "demo",
        help="end-to-end run on the embedded MNI152 tissue dataset: plan, train, predict, evaluate; "
        "Deconver next to nnU-Net's own U-Net",
        description="Builds a small nnU-Net dataset from the MNI152 template shipped with nilearn, then runs "
        "nnUNetv2_plan_and_preprocess, and nnUNetv2_train, nnUNetv2_predict and nnUNetv2_evaluate_folder for "
        "every trainer and configuration; prints the test-set Dice per class in one table and writes a PNG "
        "of one held-out case with every prediction.",
    )
    parser.add_argument("--workdir", type=Path, default=Path("nnunet_deconver_demo"),
                        help="new folder for the nnU-Net raw/preprocessed/results folders and logs "
                        "(must not exist; default: ./nnunet_deconver_demo)")
    parser.add_argument("-c", "--configurations", nargs="+", default=list(DEMO_CONFIGURATIONS),
                        choices=DEMO_CONFIGURATIONS, help="nnU-Net configurations to train (default: both)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=list(DEMO_TRAINERS),
                        help="trainer class names to compare, as for nnUNetv2_train -tr (default: "
                        f"{' '.join(DEMO_TRAINERS)}: Deconver and nnU-Net's own U-Net on the same short schedule)")
    parser.add_argument("-d", "--dataset-id", type=int, default=990, help="nnU-Net dataset id (default: 990)")
    parser.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="device for training and prediction (default: cpu)")


def _add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="write a plans file whose configurations use a preset architecture (train/predict with -p NAME)",
        description="Reads nnUNet_preprocessed/DatasetXXX/<source plans>.json (written by "
        "nnUNetv2_plan_and_preprocess) and writes <name>.json next to it, with each configuration's "
        "architecture taken from the preset of its dimension. Preprocessed data is shared, nothing is overwritten.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id, as for nnU-Net's -d")
    parser.add_argument("--preset", action="append", required=True,
                        help="preset name (see `nnunet-deconver presets`) or path to a preset JSON; "
                        "at most one 2D and one 3D preset")
    parser.add_argument("-p", "--source-plans", default="nnUNetPlans", help="plans to derive from (default: nnUNetPlans)")
    parser.add_argument("-o", "--plans-name", default=None,
                        help="name of the new plans, used with nnU-Net's -p (default: nnUNetDeconverPlans, with "
                        "--gpu-memory-target nnUNetDeconverPlans_<GB>GB)")
    parser.add_argument("--gpu-memory-target", type=float, metavar="GB",
                        help="re-plan patch and batch size the way nnU-Net's planner does, for the preset's "
                        "network: its estimated training-step peak (fp16) within GB GiB")


def _run_plan(args: argparse.Namespace) -> None:
    from nnunet_deconver.nnunet.derived_plans import DEFAULT_DERIVED_PLANS, write_derived_plans
    from nnunet_deconver.nnunet.presets import load_preset

    presets = [load_preset(name) for name in args.preset]
    memory = args.gpu_memory_target
    plans_name = args.plans_name or (DEFAULT_DERIVED_PLANS if memory is None else f"{DEFAULT_DERIVED_PLANS}_{memory:g}GB")
    target = write_derived_plans(args.dataset, presets, args.source_plans, plans_name, memory)
    print(f"wrote {target}")
    for preset in presets:
        print(f"  {preset.dimension}D configurations: {preset.name} ({preset.description})")
    print(f"use it with: nnUNetv2_train {args.dataset} <configuration> <fold> -p {plans_name} "
          f"[-tr nnUNetTrainerDeconver], and the same -p for nnUNetv2_predict")


def _add_profile_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="parameters, FLOPs, training-step memory and kernel launches, next to nnU-Net's own network",
        description="Profiles a paper preset at a patch size, a trained nnU-Net model folder at its plans' patch "
        "and batch size, or a trainer at nnU-Net's reference plans, without computing (meta device and fake "
        "tensors: no memory, seconds): parameters, FLOPs, the activations one training step saves for backward and "
        "its peak memory, in float32 and under fp16 autocast, and its kernel launches on the CUDA path. "
        "--device cuda adds the peak of a real step. FLOPs are 2 per multiply-accumulate; "
        "the 'Deconver conv.' column follows the Deconver paper: it leaves out the NDC-internal convolutions and "
        "counts elementwise operations (docs/deconver.md); the full count, NMF products included, is the "
        "Factorizer paper's convention (docs/factorizer.md).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a paper preset, e.g. deconver-isles22-k3")
    source.add_argument("-m", "--model-folder", type=Path,
                        help="nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>")
    source.add_argument("-tr", "--trainer", help="with --reference-plans: a trainer, e.g. nnUNetTrainerDeconver")
    parser.add_argument("--reference-plans", choices=["3d_fullres", "2d"],
                        help="with -tr: nnU-Net's plans for a typical dataset (3d_fullres: 128^3, batch 2, 6 stages; "
                        "2d: 512^2, batch 12, 8 stages)")
    parser.add_argument("--resenc", action="store_true", help="with --reference-plans: the ResEnc M plans")
    parser.add_argument("--device", help="also run one real fp16 training step there and report its peak (cuda)")
    parser.add_argument("--patch-size", type=int, nargs="+", help="with --preset: the input size, e.g. 64 64 64")
    parser.add_argument("--input-channels", type=int, default=1, help="with --preset (default: 1)")
    parser.add_argument("--num-classes", type=int, default=2, help="with --preset (default: 2)")
    parser.add_argument("--batch-size", type=int, default=1, help="with --preset (default: 1)")


def _run_profile(args: argparse.Namespace) -> None:
    from nnunet_deconver.analysis.report import profile_report

    print(profile_report(preset=args.preset, model_folder=args.model_folder, trainer=args.trainer,
                         reference_plans=args.reference_plans, resenc=args.resenc,
                         patch_size=tuple(args.patch_size or ()), input_channels=args.input_channels,
                         num_classes=args.num_classes, batch_size=args.batch_size, device=args.device))


PREDICT_DESCRIPTION = (
    "nnUNetv2_predict plus the inference-time NMF settings of Factorizer models (papers/factorizer.md 4.5): "
    "every nnUNetv2_predict option is accepted and passed on unchanged (see nnUNetv2_predict -h). The settings "
    "are written to <-o>/nmf_inference_settings.json; an output folder with files is refused unless "
    "--continue_prediction continues a run with the same settings."
)


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-deconver predict", description=PREDICT_DESCRIPTION,
                                     allow_abbrev=False)
    parser.add_argument("--nmf-iters", type=int, help="outer NMF iterations T for every NMF layer (trained: 5)")
    parser.add_argument("--nmf-rank", type=int, help="NMF rank R for every NMF layer (trained: 1)")
    parser.add_argument("--nmf-solver", choices=["mu", "hals"], help="NMF solver (trained: hals; equal for rank 1)")
    parser.add_argument("--skip-nmf-layers", nargs="+", default=[], metavar="N",
                        help="short-circuit these NMF layers, numbered 1 (first encoder block) to the last decoder "
                        "block; e.g. 6 7 or 6-9")
    return parser


def _run_predict(argv: Sequence[str]) -> int:
    from nnunet_deconver.nnunet.inference_knobs import NMFInferenceSettings, parse_skip_layers, predict_with_settings

    parser = _predict_parser()
    args, nnunet_args = parser.parse_known_args(argv)
    try:
        settings = NMFInferenceSettings(args.nmf_iters, args.nmf_rank, args.nmf_solver,
                                        parse_skip_layers(args.skip_nmf_layers))
        predict_with_settings(settings, nnunet_args)
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"nnunet-deconver predict: error: {error}\n")
    return 0


def _add_model_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model-folder", type=Path, required=True,
                        help="nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>")
    parser.add_argument("-i", "--image", type=Path, nargs="+", required=True,
                        help="the image's files, one per channel (CASE_0000.nii.gz ...)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNGs (created; files "
                        "already there are never replaced)")
    parser.add_argument("--slice", type=int, help="index along the image's first axis (default: the middle)")
    parser.add_argument("-f", "--fold", default="0", help="fold whose weights to use (default: 0)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda", "mps"])


def _add_components_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nmf-components",
        help="PNGs of a trained Factorizer's NMF spatial components for an image (paper Fig. 6)",
        description="Loads a trained Factorizer model folder (one fold), preprocesses an image like "
        "nnUNetv2_predict, runs the plans' patch around the chosen slice through the network and writes one PNG "
        "per NMF layer: the input next to the spatial factors G of every head, mapped back to space.",
    )
    _add_model_image_arguments(parser)
    parser.add_argument("--layers", type=int, nargs="+", help="NMF layers, 1 = first encoder block (default: "
                        "the first and the last, as in the paper)")


def _add_offsets_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dtc-offsets",
        help="PNG of where a trained model's last decoder DTC samples from, for an image (DTC paper Fig. 7)",
        description="Loads a trained model folder with DTC upsampling (one fold), preprocesses an image like "
        "nnUNetv2_predict, runs the plans' patch around the chosen slice through the network and draws the "
        "sampling offsets of the last (highest-resolution) decoder DTC: arrows, their length, and the density of "
        "the sampled positions. 3D configurations show the chosen slice.",
    )
    _add_model_image_arguments(parser)


def _figure_request(args: argparse.Namespace):
    from nnunet_deconver.analysis.model_figures import FigureRequest

    return FigureRequest(args.model_folder, args.image, args.output, fold=args.fold, checkpoint=args.checkpoint,
                         device=args.device, slice_index=args.slice)


def _run_components(args: argparse.Namespace) -> None:
    from nnunet_deconver.analysis.model_figures import write_nmf_component_figures

    for line in write_nmf_component_figures(_figure_request(args), layers=args.layers or ()):
        print(line)


def _run_offsets(args: argparse.Namespace) -> None:
    from nnunet_deconver.analysis.model_figures import write_dtc_offsets_figure

    print(write_dtc_offsets_figure(_figure_request(args)))


def _add_import_weights_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-sum-weights",
        help="install the SUM authors' released 2-D weights as an nnU-Net model folder (fold 'all')",
        description="Loads the authors' 2-D SUM state dict into the paper's SUM that a plans configuration builds "
        "(derive the plans first: nnunet-deconver plan -d D --preset sum-paper-2d -o nnUNetSUMPaperPlans) and writes "
        "nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_all/checkpoint_final.pth with the plans "
        "and dataset.json, for nnUNetv2_predict -f all and nnunet-deconver impulse -f all. Nothing is overwritten.",
    )
    parser.add_argument("weights", type=Path, help="the authors' state dict file (.pt / .pth)")
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id, as for nnU-Net's -d")
    parser.add_argument("-p", "--plans", required=True, help="plans whose configuration builds the paper's SUM")
    parser.add_argument("-c", "--configuration", default="2d", help="plans configuration (default: 2d)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerSUM_paper",
                        help="trainer name of the model folder (default: nnUNetTrainerSUM_paper)")


def _run_import_weights(args: argparse.Namespace) -> None:
    from nnunet_deconver.nnunet.sum_weight_import import install_authors_weights

    checkpoint = install_authors_weights(args.weights, args.dataset, args.plans, configuration=args.configuration,
                                         trainer_name=args.trainer)
    print(f"wrote {checkpoint}")
    print(f"use it with: nnUNetv2_predict -d {args.dataset} -c {args.configuration} -p {args.plans} "
          f"-tr {args.trainer} -f all ...")


def _run_presets() -> None:
    from nnunet_deconver.nnunet.presets import available_presets, load_preset

    names = list(available_presets())
    width = max(map(len, names))
    for name in names:
        preset = load_preset(name)
        print(f"{name:<{width}} {preset.dimension}D  {preset.description}")


def _run_demo(args: argparse.Namespace) -> None:
    from nnunet_deconver.nnunet.demo.pipeline import DemoSettings, run_demo

    run_demo(DemoSettings(args.workdir, tuple(args.configurations), tuple(args.trainers), args.dataset_id,
                          device=args.device))


# The errors each command reports in one line (anything else is a bug and keeps its traceback).
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
_RUNNERS: dict[str, tuple[Callable[[argparse.Namespace], None], tuple[type[Exception], ...]]] = {
    "demo": (_run_demo, (ValueError, FileExistsError, RuntimeError)),
    "plan": (_run_plan, (*_USER_ERRORS, RuntimeError)),
    "profile": (_run_profile, (ValueError, FileNotFoundError, RuntimeError)),
    "import-sum-weights": (_run_import_weights, (*_USER_ERRORS, RuntimeError)),
    "impulse": (run_impulse, _USER_ERRORS),
    "robustness": (run_robustness, _USER_ERRORS),
    "nmf-components": (_run_components, _USER_ERRORS),
    "dtc-offsets": (_run_offsets, _USER_ERRORS),
}


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"]:  # its options are nnUNetv2_predict's, parsed by nnU-Net itself
        return _run_predict(argv[1:])
    parser = argparse.ArgumentParser(prog="nnunet-deconver", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(subparsers)
    _add_plan_parser(subparsers)
    _add_profile_parser(subparsers)
    subparsers.add_parser("presets", help="list the shipped architecture presets")
    _add_components_parser(subparsers)
    _add_offsets_parser(subparsers)
    _add_import_weights_parser(subparsers)
    add_impulse_parser(subparsers)
    add_robustness_parser(subparsers)
    subparsers.add_parser("predict", help="nnUNetv2_predict with inference-time NMF settings for Factorizers",
                          description=PREDICT_DESCRIPTION)
    args = parser.parse_args(argv)

    if args.command == "presets":
        _run_presets()
        return 0
    runner, errors = _RUNNERS[args.command]
    try:
        runner(args)
    except errors as error:
        parser.exit(1 if args.command == "demo" else 2, f"nnunet-deconver {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
