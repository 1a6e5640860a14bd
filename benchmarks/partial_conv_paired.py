"""Paired timing of fastad.ops.partial_conv2d against the plain-PyTorch two-convolution
reference, for machines shared with other jobs.

pytest-benchmark times one contender after the other, so load that comes and goes between them
skews their ratio. Here every round times both contenders back to back (alternating which goes
first) and the ratio reported is the median of the per-round ratios. Same data and cases as
benchmarks/test_partial_conv_bench.py.

    python benchmarks/partial_conv_paired.py [--rounds 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from partial_conv_cases import BATCH, CASES, CONTENDERS, layer_data, timed_call


def paired(device: str, rounds: int) -> list[str]:
    rows = ["| case | mode | fastad median | reference median | median of paired ratios (reference / fastad) |",
            "|---|---|---:|---:|---:|"]
    for channels, size, multi_channel in CASES:
        data = layer_data(channels, size, multi_channel, device)
        for mode in ("forward", "forward+backward"):
            runs = {name: timed_call(fn, device, mode == "forward+backward", data, multi_channel)
                    for name, fn in CONTENDERS.items()}
            for run in runs.values():
                run()  # warm-up
            times = {name: [] for name in runs}
            for r in range(rounds):
                order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                for name in order:
                    start = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - start)
            ratios = [ref / fast for ref, fast in zip(times["reference"], times["fastad"])]
            case = f"B{BATCH} {channels}->{channels} {size}x{size}" + (" multi_channel" if multi_channel else "")
            row = (f"| {case} | {mode} | {statistics.median(times['fastad']) * 1e3:.0f} ms | "
                   f"{statistics.median(times['reference']) * 1e3:.0f} ms | {statistics.median(ratios):.2f}x |")
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.rounds} paired rounds")
    print("\n".join(paired(args.device, args.rounds)))


if __name__ == "__main__":
    main()
