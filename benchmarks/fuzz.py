"""The long fuzz run: the targets of tests/fuzz_targets.py (image reader, checkpoint loader,
dataset-spec parser), each for --examples inputs (default 100,000), one after the other.

    python benchmarks/fuzz.py                       # every target, 100,000 inputs each
    python benchmarks/fuzz.py --examples 2000 --targets spec

Prints, per target, how many inputs ran, how many ended in a result and how many in the named
error, and the time taken; exits 1 with hypothesis's falsifying input at the first input that
ends in anything else (another exception, or one input taking longer than --deadline seconds).
"""
from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

import fuzz_targets  # noqa: E402

TARGETS = {
    "image": (lambda: fuzz_targets.mutated(fuzz_targets.image_seeds()), fuzz_targets.image_target),
    "checkpoint": (lambda: fuzz_targets.mutated([fuzz_targets.checkpoint_seed()], header_bytes=1024),
                   fuzz_targets.checkpoint_target),
    "spec": (fuzz_targets.specs, fuzz_targets.spec_target),
}


def run(name: str, examples: int, deadline: float) -> collections.Counter:
    """Runs one target for `examples` inputs; returns how many ended in a result and in an error."""
    strategy, target = TARGETS[name]
    outcomes = collections.Counter()

    @settings(max_examples=examples, deadline=deadline * 1000, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))  # no shrinking:
    # the input is printed as drawn (a long shrink of a slow input can take longer than the run)
    @given(strategy())
    def fuzz(value):
        outcomes[target(value)] += 1

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its notes on the corrupt inputs it is fed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # likewise the decoders' warnings
        fuzz()
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="inputs per target (default 100000)")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds one input may take (default 10)")
    args = parser.parse_args(argv)
    for name in args.targets:
        started = time.monotonic()
        outcomes = run(name, args.examples, args.deadline)
        print(f"{name}: {sum(outcomes.values())} inputs, {outcomes['result']} results and {outcomes['error']} named "
              f"errors, nothing else; {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
