"""The inspection report at scale: generation time against the folder's scoring time, page and
thumbnail sizes.

    fastad score --checkpoint RUN --images FOLDER --out SCORES --no-overlays   # e.g. 10,000 images
    python benchmarks/report_scale.py SCORES [--rounds 3] [--per-image-scoring-ms 93.5]

Writes SCORES/report.html --rounds times (median reported; each round replaces the last) and
prints: generation seconds, the scoring seconds run.json recorded, their ratio, and, with
--per-image-scoring-ms, the ratio against a model scoring at that rate (e.g. a model measured by
benchmarks/throughput.py); then the HTML size and the thumbnails' total size. That the page
renders in a browser, and how its first screen looks, is tests/test_report.py's (headless
Chromium) to check.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fastad.report import assets_folder, report_scores


def generation(folder: Path, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        report_scores(folder)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-image-scoring-ms", type=float, default=None)
    args = parser.parse_args()
    timing = json.loads((args.scores / "run.json").read_text()).get("timing") or {}
    seconds = generation(args.scores, args.rounds)
    median = statistics.median(seconds)
    page = args.scores / "report.html"
    thumbs = list((assets_folder(page) / "thumbs").iterdir())
    print(f"generation: median {median:.1f} s (rounds: {', '.join(f'{s:.1f}' for s in seconds)})")
    if timing.get("seconds"):
        print(f"scoring recorded in run.json: {timing['seconds']:.1f} s for {timing['images']} images "
              f"({timing['images'] / timing['seconds']:.1f} images/s); report / scoring = "
              f"{100 * median / timing['seconds']:.1f} %")
    if args.per_image_scoring_ms:
        scoring = args.per_image_scoring_ms * len(thumbs) / 1000
        print(f"against {args.per_image_scoring_ms:g} ms/image scoring ({scoring:.0f} s for {len(thumbs)} images): "
              f"{100 * median / scoring:.1f} %")
    print(f"report.html {page.stat().st_size / 1e6:.2f} MB; {len(thumbs)} thumbnails, "
          f"{sum(t.stat().st_size for t in thumbs) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
