"""Command line: `fastad info`, `fastad demo`."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
