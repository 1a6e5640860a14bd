"""Calls every fastad op once on CUDA at a small size, forward and backward, and checks it against
its reference: the workload compute-sanitizer (memcheck, racecheck) runs in `make gpu-check`.

    python benchmarks/cuda_smoke.py [--device cuda]

The cases are the op matrix of tests/test_op_matrix.py (one source). Exits 1 if an op disagrees
with its reference.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from test_op_matrix import NAMES, assert_all_close, inputs_for, run_with_grads  # noqa: E402

import fastad  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    failed = []
    for name in NAMES:
        tensors = inputs_for(name, seed=0, device=args.device)
        native = run_with_grads(name, tensors)
        with fastad.use_backend("reference"):
            ref = run_with_grads(name, tensors)
        try:
            assert_all_close(native[0] + native[1], ref[0] + ref[1], rtol=1e-4, atol=1e-5)
        except AssertionError as error:
            failed.append(name)
            print(f"{name}: disagrees with its reference: {error}", file=sys.stderr)
        else:
            print(f"{name}: ok")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
