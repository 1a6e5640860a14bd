"""Command line: `fastad train | calibrate | score | eval | export | report | demo | info | data export`.

Exit codes: 0 done, 1 a run that failed (one line on stderr naming the file, folder or setting
and what was wrong), 2 a usage error (a bad or missing argument), 130 interrupted. `--debug` or
FASTAD_DEBUG=1 prints the traceback instead of the one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

DEBUG_ENV = "FASTAD_DEBUG"


class UsageError(Exception):
    """A command-line argument (or combination of them) that cannot work; exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `<prog>: error: <message>` (see -h for usage), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _info(args: argparse.Namespace) -> int:
    import fastad
    from fastad.info import format_info

    facts = fastad.info()
    print(json.dumps(facts, indent=2) if args.json else format_info(facts))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fastad import demo

    return demo.main(args.data, args.out, args.model, args.steps, args.seed)


def _config_value(text: str):
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _spec(text: str) -> str:
    from fastad.data.spec import parse_spec

    try:
        parse_spec(text)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _argument(convert, accept, expected: str):
    """An argparse type: text -> convert(text), refused with "expected <expected>, got ..." when
    it does not convert or accept(value) is false."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_fraction = _argument(float, lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")
_positive = _argument(int, lambda value: value >= 1, "an int >= 1")
_count = _argument(int, lambda value: value >= 0, "an int >= 0")


def _device(text: str) -> str:
    """An argparse type: a torch device name (cpu, cuda, cuda:1, ...)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def _check_device_options(args: argparse.Namespace) -> None:
    """UsageError for the scoring options that need a CUDA --device when it is not one."""
    import torch

    on_cuda = torch.device(args.device).type == "cuda"
    if args.precision == "fp16" and not on_cuda:
        raise UsageError(f"--precision fp16 needs a CUDA --device (got {args.device}); use bf16 or fp32 on the CPU")
    if getattr(args, "cuda_graphs", False) and not on_cuda:
        raise UsageError(f"--cuda-graphs needs a CUDA --device (got {args.device})")


def _train(args: argparse.Namespace) -> int:
    from fastad.engine.pipeline import fit_run

    if not args.resume and (args.model is None or args.data is None):
        raise UsageError("--model and --data are required (unless --resume)")
    model, history = fit_run(args.model, args.data, args.out, args.steps, args.seed, args.device, dict(args.set),
                             args.resume, args.checkpoint_every, calibration_holdout=args.calibration_holdout,
                             false_reject=args.false_reject)
    last = f", last loss {history[-1]['total']:.4g}" if history else ""
    print(f"trained {model.name}: {len(history)} steps{last}; checkpoint in {args.out}")
    if args.calibration_holdout:
        from fastad.engine.checkpoint import read_header

        print(_calibrated(read_header(args.out)["calibration"]))
    return 0


def _calibrated(record: dict) -> str:
    return (f"image-score threshold {record['threshold']:.6g} at a false-reject rate of {record['false_reject']:g} "
            f"({record['image_score']} rule, {record['n_images']} normal images from {record['source']}; "
            f"{100 * record['observed_false_reject']:.1f} % of them above it)")


def _calibrate(args: argparse.Namespace) -> int:
    from fastad.engine.pipeline import calibrate_run

    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images} is not a folder")
    _check_device_options(args)
    record = calibrate_run(args.checkpoint, args.images, args.false_reject, args.device, args.batch_size,
                           args.precision, progress=True)
    print(f"{_calibrated(record)}; stored in {args.checkpoint}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fastad.engine.evaluation import format_decision, format_table
    from fastad.engine.pipeline import RESULTS_FILE, evaluate_run
    from fastad.engine.scores_folder import REPORT_FILE

    _check_device_options(args)
    report, on_scored = None, None
    if args.report:
        from fastad.report.evaluation import reporter

        report = Path(args.checkpoint) / REPORT_FILE
        on_scored = reporter(report, Path(args.checkpoint))
    record = evaluate_run(args.checkpoint, args.data, args.device, args.batch_size, args.precision,
                          args.overlays or args.report, progress=not args.json, on_scored=on_scored)
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "skipped_files"}))
        return 0
    print(f"{record['model']} on {record['data']}: {record['n_images']} images, {record['skipped']} skipped")
    print(format_table({record["model"]: record}))
    if "decision" in record:
        print(format_decision(record["decision"]))
    print(f"wrote {args.checkpoint}/{RESULTS_FILE}")
    if report is not None:
        print(f"report: {report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fastad.report import REPORT_FILE, read_scores_dir, write_report

    data = read_scores_dir(args.scores_dir)
    path = write_report(data, args.out or Path(args.scores_dir) / REPORT_FILE)
    for notice in data.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"report of {len(data.rows)} images: {path}")
    return 0


def _score_report(args: argparse.Namespace) -> None:
    """With --report: the report of the folder just scored, its path printed."""
    if args.report:
        from fastad.report import report_scores

        print(f"report: {report_scores(args.out)}")


def _score(args: argparse.Namespace) -> int:
    from fastad.engine.scorer import Scorer

    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images} is not a folder")
    _check_device_options(args)
    if args.network_engine != "torch" and (args.engine != "local" or args.model_file is not None):
        raise UsageError("--network-engine is for --engine local with --checkpoint")
    if args.engine == "ray" and args.model_file is None:
        return _score_ray(args)
    if args.address is not None or args.replicas is not None:
        raise UsageError("--address and --replicas need --engine ray")
    scorer = _model_file_scorer(args) if args.model_file is not None else \
        Scorer(args.checkpoint, args.device, args.batch_size, args.precision, args.cuda_graphs,
               network_engine=args.network_engine)
    scored = scorer.score_folder(args.images, args.out, None if args.maps == "none" else args.maps,
                                 not args.no_overlays, args.workers, overwrite=args.overwrite)
    _check_scored(args.images, scored.paths, scored.skipped)
    print(f"scored {len(scored.paths)} images ({scored.resumed} already done by an earlier attempt, "
          f"{len(scored.skipped)} skipped as unreadable, {len(scored.ignored)} ignored as no image files) "
          f"-> {args.out}/scores.csv")
    _score_report(args)
    return 0


def _model_file_scorer(args: argparse.Namespace):
    """The fastad.deploy inferencer of --model-file (CPU runtimes: no --device, --precision or CUDA graphs)."""
    from fastad.deploy import load

    if args.engine != "local" or args.device != "cpu" or args.precision != "fp32" or args.cuda_graphs:
        raise UsageError("--model-file runs on the CPU runtime the artefact names; drop --engine, --device, "
                         "--precision and --cuda-graphs (its precision was chosen at export)")
    return load(args.model_file, args.runtime, args.batch_size)


def _export(args: argparse.Namespace) -> int:
    from fastad.deploy import export

    out = export(args.checkpoint, args.out, args.format, args.precision, args.input_dtype)
    metadata = json.loads((out / "metadata.json").read_text())
    deviation = metadata["deviation"]
    print(f"exported {metadata['model']} as {args.format} ({args.precision}) -> {out}/{metadata['file']}; "
          f"deviation from PyTorch on {deviation['images']} {deviation['data']} images: maps "
          f"{deviation['maps']:.2g}, image scores {deviation['image_scores']:.2g} (relative)")
    return 0


def _check_scored(images, paths: list, skipped: list) -> None:
    """RuntimeError saying why when a scoring run scored no image (every file failed to decode)."""
    if not paths:
        raise RuntimeError(f"no image was scored in {images}: all {len(skipped)} image files failed to decode "
                           "(each is named above)")


def _score_ray(args: argparse.Namespace) -> int:
    from fastad.distributed import score_on_ray

    if not args.no_overlays:
        raise UsageError("--engine ray writes scores.csv and maps only; add --no-overlays "
                         "(overlays need every map of the set on one machine: use --engine local)")
    if args.workers is not None:
        raise UsageError("--workers is for --engine local; Ray replicas decode with their own CPUs")
    result = score_on_ray(args.checkpoint, args.images, args.out, address=args.address, num_replicas=args.replicas,
                          batch_size=args.batch_size, device=args.device, precision=args.precision,
                          save_maps=args.maps == "npy", cuda_graphs=args.cuda_graphs, overwrite=args.overwrite)
    _check_scored(args.images, result.paths, result.skipped)
    print(f"scored {len(result.paths)} images on Ray ({result.resumed} already done by an earlier run, "
          f"{len(result.skipped)} skipped as unreadable) -> {args.out}/scores.csv")
    _score_report(args)
    return 0


def _data(args: argparse.Namespace) -> int:
    import warnings

    from fastad.data import SkippedImageWarning, export_mvtec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # reported below, one line each
        result = export_mvtec(args.spec, args.out_dir, name=args.name, size=args.size, seed=args.seed)
    for path, reason in result["skipped"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    defects = ", ".join(f"{d} {n}" for d, n in result["defects"].items())
    print(f"wrote {result['path']}: {result['train']} train, {result['test']} test ({defects}); "
          f"{len(result['skipped'])} skipped as unreadable")
    return 0


def _model_names() -> list[str]:
    import fastad.models  # noqa: F401  (registers every model)
    from fastad.models.registry import MODELS

    return sorted(MODELS)


def _add_train(commands, forms: str) -> None:
    train = commands.add_parser("train", help="train a model on a dataset, checkpointing into --out")
    train.add_argument("--model", choices=_model_names(), help="registered model name")
    train.add_argument("--data", type=_spec, help=f"dataset spec: {forms}")
    train.add_argument("--out", required=True, help="run folder (checkpoint.safetensors, config.json, history.json)")
    train.add_argument("--steps", type=_count, default=None, help="steps per stage (default: the model's demo size)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    train.add_argument("--set", type=_config_value, action="append", default=[], metavar="KEY=VALUE",
                       help="model constructor argument (JSON value), repeatable, e.g. --set stride=8")
    train.add_argument("--checkpoint-every", type=_positive, default=50, help="steps between checkpoints (>= 1)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.add_argument("--calibration-holdout", type=_fraction, default=0.0, metavar="FRACTION",
                       help="hold out this fraction of the normal images from training and set the pass/fail "
                            "threshold on them (default 0: train on all, no threshold; see fastad calibrate)")
    _add_false_reject(train)
    train.set_defaults(run=_train)


def _add_false_reject(parser) -> None:
    from fastad.engine.decision import DEFAULT_FALSE_REJECT

    parser.add_argument("--false-reject", type=_fraction, default=DEFAULT_FALSE_REJECT, metavar="RATE",
                        help=f"fraction of normal images the threshold may reject (default {DEFAULT_FALSE_REJECT:g})")


def _add_calibrate(commands, precisions) -> None:
    calibrate = commands.add_parser("calibrate", help="store a pass/fail image-score threshold set on normal images")
    calibrate.add_argument("--checkpoint", required=True, help="run folder written by fastad train")
    calibrate.add_argument("--images", required=True, help="folder of normal images (at least 10; 1/RATE to "
                                                           "resolve the rate)")
    _add_false_reject(calibrate)
    _add_scoring_options(calibrate, precisions)
    calibrate.set_defaults(run=_calibrate)


def _add_scoring_options(parser, precisions) -> None:
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--precision", choices=precisions, default=precisions[0],
                        help="autocast precision (fp16: CUDA only)")


def _add_eval(commands, forms: str, precisions) -> None:
    evaluate = commands.add_parser("eval", help="metrics of a checkpoint on a dataset's test split")
    evaluate.add_argument("--checkpoint", required=True, help="run folder written by fastad train")
    evaluate.add_argument("--data", type=_spec, default=None,
                          help=f"dataset spec, {forms} (default: the one it was trained on)")
    evaluate.add_argument("--json", action="store_true", help="print only the results JSON object")
    evaluate.add_argument("--overlays", action="store_true", help="also write heat-map overlays into the run folder")
    evaluate.add_argument("--report", action="store_true",
                          help="also write the HTML report (and the overlays it links) into the run folder")
    _add_scoring_options(evaluate, precisions)
    evaluate.set_defaults(run=_eval)


def _add_score(commands, precisions) -> None:
    from fastad.deploy.inferencer import RUNTIMES
    from fastad.engine.network_engines import NETWORK_ENGINES

    score = commands.add_parser("score", help="score a folder of images with a checkpoint")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run folder written by fastad train")
    source.add_argument("--model-file", default=None, help="artefact folder written by fastad export (scored "
                        "by ONNX Runtime or OpenVINO on the CPU)")
    score.add_argument("--runtime", choices=RUNTIMES, default=None,
                       help="with --model-file: the runtime (default: onnxruntime for ONNX, openvino for IR)")
    score.add_argument("--images", required=True, help="folder of images to score")
    score.add_argument("--out", required=True, help="writes scores.csv, maps/*.npy, overlays/*.png, run.json; "
                                                   "the same command again resumes an interrupted run")
    score.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    _add_scoring_options(score, precisions)
    score.add_argument("--cuda-graphs", action="store_true", help="replay fixed-shape batches as CUDA graphs")
    score.add_argument("--network-engine", choices=NETWORK_ENGINES, default=NETWORK_ENGINES[0],
                       help="where the model's backbone runs on the CPU: torch, or openvino (several times faster "
                            "for efficientnet_lite backbones; fastad's kernels do the search and maps)")
    score.add_argument("--workers", type=_count, default=None, help="DataLoader decoding workers (default: cores - 1, at most 4)")
    score.add_argument("--maps", choices=("npy", "none"), default="npy", help="per-image anomaly maps")
    score.add_argument("--no-overlays", action="store_true", help="skip the heat-map overlay PNGs")
    score.add_argument("--report", action="store_true", help="also write the HTML report, OUT/report.html")
    score.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process; ray: an actor pool on a Ray cluster (pip install 'fastad[ray]')")
    score.add_argument("--address", default=None,
                       help="Ray cluster address for --engine ray (e.g. auto, ray://head:10001; default: RAY_ADDRESS "
                            "or a new local cluster)")
    score.add_argument("--replicas", type=_positive, default=None,
                       help="model replicas for --engine ray (default: one per GPU with --device cuda, else per CPU)")
    score.set_defaults(run=_score)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="the HTML inspection report of a fastad score output folder")
    report.add_argument("scores_dir", help="the --out folder of fastad score (scores.csv, run.json, maps/)")
    report.add_argument("--out", default=None, help="the .html file to write (default SCORES_DIR/report.html; "
                                                    "thumbnails go into <name>_files/ beside it)")
    report.set_defaults(run=_report)


def _add_export(commands) -> None:
    from fastad.deploy.export import EXPORT_PRECISIONS, FORMATS, INPUT_DTYPES

    export = commands.add_parser("export", help="write a checkpoint's scoring graph as an ONNX or OpenVINO artefact")
    export.add_argument("--checkpoint", required=True, help="run folder written by fastad train")
    export.add_argument("--format", choices=tuple(FORMATS), required=True)
    export.add_argument("--out", required=True, help="artefact folder: the graph file(s) and metadata.json")
    export.add_argument("--precision", choices=EXPORT_PRECISIONS, default=EXPORT_PRECISIONS[0], help="fp16: OpenVINO only")
    export.add_argument("--input-dtype", choices=INPUT_DTYPES, default=INPUT_DTYPES[0],
                        help="the graph's input: float32 in [0, 1] or uint8 0..255")
    export.set_defaults(run=_export)


def _add_data(commands, forms: str) -> None:
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="write a dataset in the MVTec-AD layout", description=f"SPEC: {forms}")
    export.add_argument("spec", type=_spec, help="e.g. builtin:brick")
    export.add_argument("out_dir", help="writes OUT_DIR/<name>/train, test, ground_truth")
    export.add_argument("--name", default=None, help="category folder name (default: texture, category or test folder)")
    export.add_argument("--size", type=_positive, default=256, help="square image side in pixels (default 256)")
    export.add_argument("--seed", type=int, default=0, help="seed of builtin datasets")
    export.set_defaults(run=_data)


def build_parser() -> argparse.ArgumentParser:
    from fastad.data.spec import FORMS
    from fastad.engine.scorer import SCORING_PRECISIONS

    parser = Parser(prog="fastad", description="Fast anomaly localization operators and models.")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch CPU threads (default: torch's; on a machine shared with other jobs, fewer "
                             "threads than cores avoids OpenMP threads waiting on each other)")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (anywhere on the line; or {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="what was built and loaded")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(run=_info)
    from fastad.demo import DEFAULT_MODEL

    demo = commands.add_parser("demo", help=f"fit {DEFAULT_MODEL} on builtin:brick, evaluate it next to a raw-pixel "
                                            "baseline")
    demo.add_argument("--data", type=_spec, default="builtin:brick", help="dataset spec (default builtin:brick)")
    demo.add_argument("--model", choices=_model_names(), default=DEFAULT_MODEL)
    demo.add_argument("--out", default=None, help="folder for results.json, overlays and the checkpoint (default: a temp folder)")
    demo.add_argument("--steps", type=_count, default=None, help="training steps per stage (default: the model's demo size)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    _add_train(commands, FORMS)
    _add_calibrate(commands, tuple(SCORING_PRECISIONS))
    _add_eval(commands, FORMS, tuple(SCORING_PRECISIONS))
    _add_score(commands, tuple(SCORING_PRECISIONS))
    _add_report(commands)
    _add_export(commands)
    _add_data(commands, FORMS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit code (argparse's own usage errors exit 2 directly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    name = f"fastad {args.command}"
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  every failure is one line unless debugging
        if debug:
            traceback.print_exc()
        else:
            print(f"{name}: error: {_describe(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


def _describe(error: Exception) -> str:
    """One line: the message, prefixed by the exception's name when the message alone is not one."""
    message = " ".join(str(error).split())
    if isinstance(error, (UsageError, ValueError, TypeError, OSError, RuntimeError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
