"""Global-Net inference over all patches of one image: shared computation vs masked copies.

Times GlobalNet.forward_shared (one unmasked pass + each patch's changed boxes), one batch of P
masked copies, and P single-copy passes, alternating the three, median of --repeats, and prints
one JSON line per stride.

    python benchmarks/glance_inference.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastad.models import GlanceNet
from fastad.models.glance.boxes import hole_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GlanceNet().eval()
    size, k = model.image_size, model.patch_size
    image = torch.rand(1, 3, size, size)
    for stride in (16, 8):
        model.config["stride"] = stride
        grid = model.grid(size, size)
        corners = (grid.centres(torch.float32) - (k - 1) / 2).round().long()
        holes = hole_masks(corners[:, 0], corners[:, 1], k, (size, size))
        runs = {"shared": lambda: model.global_net.forward_shared(image, corners, k),
                "copies_batch": lambda: model.global_net(image.expand(len(holes), -1, -1, -1), holes),
                "copies_loop": lambda: [model.global_net(image, hole[None]) for hole in holes]}
        times = {name: [] for name in runs}
        with torch.no_grad():
            for name, run in runs.items():
                run()                                              # warm-up
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        print(json.dumps({"stride": stride, "patches": grid.num_patches, "threads": args.threads,
                          **{f"{name}_s": round(statistics.median(t), 4) for name, t in times.items()}}))


if __name__ == "__main__":
    main()
