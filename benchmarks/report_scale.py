"""The inspection report at scale: generation time against the folder's scoring time, page and
thumbnail sizes, and the first screen in headless Chromium.

    fastad score --checkpoint RUN --images FOLDER --out SCORES --no-overlays   # e.g. 10,000 images
    python benchmarks/report_scale.py SCORES [--rounds 3] [--per-image-scoring-ms 93.5]

Writes SCORES/report.html --rounds times (median reported; each round replaces the last) and
prints: generation seconds, the scoring seconds run.json recorded, their ratio, and, with
--per-image-scoring-ms, the ratio against a model scoring at that rate (e.g. a model measured by
benchmarks/throughput.py); then the HTML size, the thumbnails' total size, and in Chromium
(1280 x 900 viewport) the time from navigation to the load event, to the first gallery render,
and to every thumbnail of the first screen decoded (median of --rounds page loads).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import Chromium  # noqa: E402  (the tests' DevTools-protocol driver)

from fastad.report import assets_folder, report_scores  # noqa: E402

FIRST_SCREEN = ("new Promise(done => { const shown = [...document.querySelectorAll('#grid img')].filter(i => "
                "i.getBoundingClientRect().top < innerHeight); Promise.all(shown.map(i => i.decode().catch(() => "
                "0))).then(() => done([performance.now(), shown.length, window.fastadReport.firstRenderMs])); })")


def generation(folder: Path, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        report_scores(folder)
        times.append(time.perf_counter() - started)
    return times


def first_screen(page_file: Path, rounds: int) -> list[tuple[float, float, float, int]]:
    """[(load event ms, first render ms, first screen decoded ms, thumbnails on it)] per page load."""
    results = []
    with Chromium.start() as browser:
        for _ in range(rounds):
            page = browser.open("about:blank")
            page.navigate(page_file.as_uri())
            load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            done, shown, render = page.evaluate(FIRST_SCREEN)
            if page.errors:
                raise RuntimeError(f"the page reported errors: {page.errors}")
            results.append((load, render, done, shown))
    return results


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
    screens = first_screen(page, args.rounds)
    for name, column in (("load event", 0), ("first gallery render", 1), ("first screen decoded", 2)):
        values = [s[column] for s in screens]
        print(f"chromium {name}: median {statistics.median(values):.0f} ms ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"thumbnails on the first screen: {screens[0][3]}")


if __name__ == "__main__":
    main()
