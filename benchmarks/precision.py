"""Does autocast keep the metrics? Evaluates trained runs in fp32 and in reduced precision.

    python benchmarks/precision.py runs/brick runs/grass --precisions bf16        # CPU
    python benchmarks/precision.py runs/brick --device cuda --precisions bf16 fp16

Prints one JSON line per run and precision with each metric's difference from fp32; the
Scorer's precision option is recommended only where every |difference| <= 0.005.
"""
from __future__ import annotations

import argparse
import json
import time

from fastad.engine import Scorer
from fastad.engine.evaluation import METRIC_KEYS
from fastad.engine.pipeline import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by fastad train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    for run in args.runs:
        records = {}
        for precision in ["fp32", *args.precisions]:
            scorer = Scorer(run, args.device, args.batch_size, precision)
            start = time.perf_counter()
            records[precision] = evaluate(scorer, scorer.header["data"], progress=False)
            records[precision]["seconds"] = time.perf_counter() - start
        for precision in args.precisions:
            delta = {k: records[precision][k] - records["fp32"][k] for k in METRIC_KEYS
                     if records[precision][k] is not None and records["fp32"][k] is not None}
            print(json.dumps({"run": run, "model": records["fp32"]["model"], "precision": precision,
                              "fp32": {k: records["fp32"][k] for k in METRIC_KEYS}, "delta": delta,
                              "within_0.005": all(abs(v) <= 0.005 for v in delta.values()),
                              "seconds_fp32": records["fp32"]["seconds"], "seconds": records[precision]["seconds"]}))


if __name__ == "__main__":
    main()
