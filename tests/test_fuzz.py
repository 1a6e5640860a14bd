"""A brief fuzz run (a few seconds per target) of the image reader, the checkpoint loader and the
dataset-spec parser: every input ends in a result or the named error (tests/fuzz_targets.py).

The long run (`make fuzz`) is this file with FASTAD_FUZZ_EXAMPLES set: that many inputs per
target, the input printed as drawn (no shrinking: a long shrink of a slow input can outlast the run).
"""
import functools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import fuzz_targets

FOUND = Path(__file__).parent / "fixtures" / "fuzz"  # inputs a long run failed on once, kept: <target>-<what>.<ext>

LONG = int(os.environ.get("FASTAD_FUZZ_EXAMPLES", "0"))  # inputs per target of a long run; 0: the brief one


def examples(brief: int) -> settings:
    """`brief` inputs (the test suite's run), or FASTAD_FUZZ_EXAMPLES of them without shrinking."""
    if LONG:
        return settings(max_examples=LONG, deadline=10_000, database=None, derandomize=True,
                        suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
    return settings(max_examples=brief, deadline=10_000, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@functools.lru_cache(maxsize=1)
def _checkpoint_seeds() -> list[bytes]:
    return [fuzz_targets.checkpoint_seed()]


@examples(300)
@given(fuzz_targets.mutated(fuzz_targets.image_seeds()))
def test_the_image_reader_gives_an_image_or_a_named_error(data):
    fuzz_targets.image_target(data)


def test_the_checkpoint_loader_gives_a_model_or_a_named_error():
    @examples(150)
    @given(fuzz_targets.mutated(_checkpoint_seeds(), header_bytes=1024))
    def run(data):
        fuzz_targets.checkpoint_target(data)

    run()


def test_an_unchanged_seed_checkpoint_loads():
    fuzz_targets.checkpoint_target(_checkpoint_seeds()[0])
    from fastad.engine.checkpoint import load_checkpoint

    assert load_checkpoint(fuzz_targets.WORK / "fuzz.safetensors").verified


@pytest.mark.parametrize("path", sorted(FOUND.iterdir()), ids=lambda p: p.name)
def test_inputs_a_long_run_found_give_a_result_or_a_named_error(path):
    target = {"image": fuzz_targets.image_target, "checkpoint": fuzz_targets.checkpoint_target}[path.name.split("-")[0]]
    assert target(path.read_bytes()) in ("result", "error")


@examples(1000)
@given(fuzz_targets.specs())
def test_the_spec_parser_gives_a_spec_or_a_named_error(text):
    fuzz_targets.spec_target(text)
