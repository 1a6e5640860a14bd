"""Command line: `fastad info`, `fastad demo`, `fastad data export SPEC DIR`."""
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

    demo.main(args.texture, args.seed)
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
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="what was built and loaded")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(run=_info)
    demo = commands.add_parser("demo", help="nearest-neighbour defect finding on a real texture photo")
    demo.add_argument("--texture", default="brick", choices=("brick", "grass", "gravel"))
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
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
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
