"""Per-image cost of the resume fingerprint (fastad.files.file_fingerprint) beside decoding the
image (fastad.data.images.load_image at 256 px), both timed in turn on the same 32 files.

    python benchmarks/fingerprint_cost.py [FOLDER]    # writes 1024x1024 PNGs and JPEGs there
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fastad.data.images import load_image
from fastad.files import file_fingerprint

ROUNDS, FILES, SIDE = 3, 32, 1024


def write_files(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(FILES):
        pixels = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        pixels.save(folder / f"{i:02d}.png", compress_level=1)  # random pixels: incompressible, the worst case
        pixels.save(folder / f"{i:02d}.jpg", quality=90)


def _timed(fn, paths) -> float:
    started = time.perf_counter()
    for path in paths:
        fn(path)
    return time.perf_counter() - started


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_files(folder)
    for suffix in ("png", "jpg"):
        paths = sorted(folder.glob(f"*.{suffix}"))
        fingerprint, decode = [], []
        for _ in range(ROUNDS):  # alternating, so load drift hits both alike
            fingerprint.append(_timed(file_fingerprint, paths))
            decode.append(_timed(lambda p: load_image(p, 256), paths))
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"{suffix} {SIDE}x{SIDE} ({size:.2f} MB): fingerprint {min(fingerprint) / len(paths) * 1e3:.2f} ms, "
              f"decode+resize {min(decode) / len(paths) * 1e3:.2f} ms per image, ratio {min(fingerprint) / min(decode):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
