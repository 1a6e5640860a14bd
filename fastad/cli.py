"""Command line: `fastad train | score | eval | demo | info | data export`."""
from __future__ import annotations

import argparse
import json
import sys


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


def _train(args: argparse.Namespace) -> int:
    from fastad.engine.pipeline import fit_run

    if not args.resume and (args.model is None or args.data is None):
        raise SystemExit("fastad train: --model and --data are required (unless --resume)")
    model, history = fit_run(args.model, args.data, args.out, args.steps, args.seed, args.device, dict(args.set),
                             args.resume, args.checkpoint_every)
    last = f", last loss {history[-1]['total']:.4g}" if history else ""
    print(f"trained {model.name}: {len(history)} steps{last}; checkpoint in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fastad.engine.evaluation import format_table
    from fastad.engine.pipeline import RESULTS_FILE, evaluate_run

    record = evaluate_run(args.checkpoint, args.data, args.device, args.batch_size, args.precision, args.overlays,
                          progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "skipped_files"}))
        return 0
    print(f"{record['model']} on {record['data']}: {record['n_images']} images, {record['skipped']} skipped")
    print(format_table({record["model"]: record}))
    print(f"wrote {args.checkpoint}/{RESULTS_FILE}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from fastad.engine.scorer import Scorer

    if args.engine == "ray":
        return _score_ray(args)
    if args.address is not None or args.replicas is not None:
        raise SystemExit("fastad score: --address and --replicas need --engine ray")
    scorer = Scorer(args.checkpoint, args.device, args.batch_size, args.precision, args.cuda_graphs)
    scored = scorer.score_folder(args.images, args.out, None if args.maps == "none" else args.maps,
                                 not args.no_overlays, args.workers)
    print(f"scored {len(scored.paths)} images ({len(scored.skipped)} skipped as unreadable) -> {args.out}/scores.csv")
    return 0


def _score_ray(args: argparse.Namespace) -> int:
    from fastad.distributed import score_dataset

    if not args.no_overlays:
        raise SystemExit("fastad score --engine ray writes scores.csv and maps only; add --no-overlays "
                         "(overlays need every map of the set on one machine: use --engine local)")
    if args.workers is not None:
        raise SystemExit("fastad score: --workers is for --engine local; Ray replicas decode with their own CPUs")
    result = score_dataset(args.checkpoint, args.images, args.out, address=args.address, num_replicas=args.replicas,
                           batch_size=args.batch_size, device=args.device, precision=args.precision,
                           save_maps=args.maps == "npy", cuda_graphs=args.cuda_graphs)
    print(f"scored {len(result.paths)} images on Ray ({result.resumed} already done by an earlier run, "
          f"{len(result.skipped)} skipped as unreadable) -> {args.out}/scores.csv")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastad", description="Fast anomaly localization operators and models.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; on a machine shared with other jobs, fewer "
                             "threads than cores avoids OpenMP threads waiting on each other)")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="what was built and loaded")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(run=_info)
    demo = commands.add_parser("demo", help="train PEDENet on builtin:brick, evaluate it next to a raw-pixel baseline")
    demo.add_argument("--data", default="builtin:brick", help="dataset spec (default builtin:brick)")
    demo.add_argument("--model", default="pedenet")
    demo.add_argument("--out", default=None, help="folder for results.json, overlays and the checkpoint (default: a temp folder)")
    demo.add_argument("--steps", type=int, default=None, help="training steps per stage (default: the model's demo size)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train a model on a dataset, checkpointing into --out")
    train.add_argument("--model", help="pedenet, fcdd, glance, utad, rawpixel")
    train.add_argument("--data", help="builtin:<texture>, mvtec:<root>/<category> or folder:normal=DIR,test=DIR[,masks=DIR]")
    train.add_argument("--out", required=True, help="run folder (checkpoint.safetensors, config.json, history.json)")
    train.add_argument("--steps", type=int, default=None, help="steps per stage (default: the model's demo size)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    train.add_argument("--set", type=_config_value, action="append", default=[], metavar="KEY=VALUE",
                       help="model constructor argument (JSON value), repeatable, e.g. --set stride=8")
    train.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="metrics of a checkpoint on a dataset's test split")
    evaluate.add_argument("--checkpoint", required=True, help="run folder written by fastad train")
    evaluate.add_argument("--data", default=None, help="dataset spec (default: the one it was trained on)")
    evaluate.add_argument("--json", action="store_true", help="print only the results JSON object")
    evaluate.add_argument("--overlays", action="store_true", help="also write heat-map overlays into the run folder")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                          help="autocast precision (fp16: CUDA only)")
    evaluate.set_defaults(run=_eval)

    score = commands.add_parser("score", help="score a folder of images with a checkpoint")
    score.add_argument("--checkpoint", required=True, help="run folder written by fastad train")
    score.add_argument("--images", required=True, help="folder of images to score")
    score.add_argument("--out", required=True, help="writes scores.csv, maps/*.npy, overlays/*.png")
    score.add_argument("--device", default="cpu")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="autocast precision (fp16: CUDA only)")
    score.add_argument("--cuda-graphs", action="store_true", help="replay fixed-shape batches as CUDA graphs")
    score.add_argument("--workers", type=int, default=None, help="DataLoader decoding workers (default: cores - 1, at most 4)")
    score.add_argument("--maps", choices=("npy", "none"), default="npy", help="per-image anomaly maps")
    score.add_argument("--no-overlays", action="store_true", help="skip the heat-map overlay PNGs")
    score.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process; ray: an actor pool on a Ray cluster (pip install 'fastad[ray]')")
    score.add_argument("--address", default=None,
                       help="Ray cluster address for --engine ray (e.g. auto, ray://head:10001; default: RAY_ADDRESS "
                            "or a new local cluster)")
    score.add_argument("--replicas", type=int, default=None,
                       help="model replicas for --engine ray (default: one per GPU with --device cuda, else per CPU)")
    score.set_defaults(run=_score)
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="write a dataset in the MVTec-AD layout",
                             description="SPEC: builtin:<texture>, mvtec:<root>/<category> or "
                                         "folder:normal=DIR,test=DIR[,masks=DIR]")
    export.add_argument("spec", help="e.g. builtin:brick")
    export.add_argument("out_dir", help="writes OUT_DIR/<name>/train, test, ground_truth")
    export.add_argument("--name", default=None, help="category folder name (default: texture, category or test folder)")
    export.add_argument("--size", type=int, default=256, help="square image side in pixels (default 256)")
    export.add_argument("--seed", type=int, default=0, help="seed of builtin datasets")
    export.set_defaults(run=_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"fastad: --threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
