"""The first run on a GPU machine in one command (`make gpu-check`): build, CUDA tests, sanitizers,
GPU benchmarks and scoring throughput, summarised in one Markdown report.

    python benchmarks/gpu_check.py [--report-dir gpu-report] [--dry-run]

Uses the python that runs it and the CUDA torch already installed there (never a new environment).
Steps, each with its own timeout; a failed or timed-out step is reported and the next one runs:
  build       fastad._C in place for the present GPU's architecture only, MAX_JOBS = all cores
  tests       pytest -m cuda over tests/
  memcheck    compute-sanitizer --tool memcheck over the op matrix's CUDA cases (every op once,
              forward and backward, against its reference: tests/test_op_matrix.py)
  racecheck   compute-sanitizer --tool racecheck over the same
  benchmarks  the GPU groups of benchmarks/ (pytest-benchmark, short --benchmark-max-time)
  throughput  benchmarks/throughput.py --device cuda --precision bf16 --batch-size 32 --cuda-graphs
The timeouts add up to 7.6 minutes. The report (REPORT.md in --report-dir) gives the device,
each step's result and time, the tail of each failed step's output and the benchmark tables.

--dry-run checks this script on a machine without a GPU: the same pipeline with the build skipped
and tiny CPU stand-ins for the GPU steps, so the report's layout can be seen; it measures nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TAIL_LINES = 60


@dataclasses.dataclass
class Step:
    name: str
    command: list[str]
    timeout: int
    env: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    step: Step
    status: str       # "pass", "fail (rc N)", "timeout", "not run: ..."
    seconds: float
    output: str


def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count()}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        facts.update(device=torch.cuda.get_device_name(), arch=f"{major}.{minor}",
                     devices=torch.cuda.device_count())
    else:
        facts.update(device="no CUDA device", arch=None, devices=0)
    return facts


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = pathlib.Path(home or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.exists():
            return str(candidate)
    return None


def smoke_run(device: str) -> list[str]:
    """The sanitizers' workload: every op of the op matrix once on `device`, forward and backward,
    checked against its reference (the test that the reference backend runs no compiled op)."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_op_matrix.py",
            "-k", f"test_reference_backend_runs_no_compiled_op and {device}"]


def gpu_steps(arch: str, work: pathlib.Path) -> list[Step]:
    py = sys.executable
    cores = str(os.cpu_count() or 1)
    tool = sanitizer() or "compute-sanitizer"
    smoke = smoke_run("cuda")
    return [
        Step("build", [py, "setup.py", "build_ext", "--inplace"], 160,
             {"FASTAD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": cores}),
        Step("tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"], 140,
             {"TORCHINDUCTOR_COMPILE_THREADS": cores}),
        Step("memcheck", [tool, "--tool", "memcheck", "--error-exitcode", "1", *smoke], 35),
        Step("racecheck", [tool, "--tool", "racecheck", "--error-exitcode", "1", *smoke], 35),
        Step("benchmarks", [py, "-m", "pytest", "benchmarks", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                            "--benchmark-max-time=0.1", "--benchmark-group-by=group",
                            f"--benchmark-json={work / 'bench.json'}"], 45),
        Step("throughput", [py, "benchmarks/throughput.py", "--device", "cuda", "--precision", "bf16",
                            "--batch-size", "32", "--cuda-graphs", "--rounds", "3", "--latency-runs", "10"], 40),
    ]


def dry_run_steps(work: pathlib.Path) -> list[Step]:
    """The pipeline's shape on a CPU-only machine: no build, tiny CPU stand-ins (nothing measured)."""
    py = sys.executable
    tool = sanitizer() or "compute-sanitizer"
    return [
        Step("tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_op_matrix.py"],
             120),
        Step("memcheck", [tool, "--tool", "memcheck", *smoke_run("cpu")], 60),
        Step("benchmarks", [py, "-m", "pytest", "benchmarks/test_upsample_bench.py", "-q", "-p", "no:cacheprovider",
                            "-k", "blur and cpu", "--benchmark-max-time=0.01", "--benchmark-group-by=group",
                            f"--benchmark-json={work / 'bench.json'}"], 120),
        Step("throughput", [py, "benchmarks/throughput.py", "--device", "cpu", "--models", "rawpixel",
                            "--batch-size", "2", "--rounds", "1", "--latency-runs", "1"], 120),
    ]


def run(step: Step) -> Outcome:
    if not pathlib.Path(step.command[0]).exists() and shutil.which(step.command[0]) is None:
        return Outcome(step, f"not run: {step.command[0]} not found", 0.0, "")
    env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    print(f"[gpu-check] {step.name}: {' '.join(step.command)}", flush=True)
    try:
        done = subprocess.run(step.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=step.timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        return Outcome(step, f"timeout after {step.timeout} s", time.monotonic() - start, output)
    status = "pass" if done.returncode == 0 else f"fail (rc {done.returncode})"
    outcome = Outcome(step, status, time.monotonic() - start, done.stdout)
    print(f"[gpu-check] {step.name}: {outcome.status} in {outcome.seconds:.1f} s", flush=True)
    return outcome


def benchmark_tables(path: pathlib.Path) -> list[str]:
    """One Markdown table per benchmark group: median, min, rounds and the ratio to the group's fastest."""
    if not path.exists():
        return ["(no benchmark results)"]
    groups: dict[str, list[dict]] = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        groups.setdefault(bench.get("group") or "(no group)", []).append(bench)
    lines = []
    for group, benches in sorted(groups.items()):
        fastest = min(b["stats"]["median"] for b in benches)
        lines += [f"**{group}**", "", "| benchmark | median ms | min ms | rounds | × fastest |", "|---|---:|---:|---:|---:|"]
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            s = b["stats"]
            lines.append(f"| {b['name']} | {1e3 * s['median']:.3f} | {1e3 * s['min']:.3f} | {s['rounds']} "
                         f"| {s['median'] / fastest:.2f} |")
        lines.append("")
    return lines


def throughput_table(output: str) -> list[str]:
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    if not rows:
        return ["(no throughput rows)"]
    lines = ["| model | contender | images/s | p50 ms | p99 ms | fastad × faster |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        for name, stats in row.items():
            if not isinstance(stats, dict) or "images_per_s" not in stats:
                continue
            ratio = stats.get("ratio_fastad", {}).get("median")
            lines.append(f"| {row['model']} | {name} | {stats['images_per_s']:.1f} | {stats['p50_ms']:.2f} "
                         f"| {stats['p99_ms']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} |")
        lines.append(f"| {row['model']} | reference agrees | {row['reference_agrees']} | | | |")
    return lines


def report(facts: dict, outcomes: list[Outcome], work: pathlib.Path, dry_run: bool) -> str:
    title = "fastad gpu-check" + (" (dry run: nothing measured)" if dry_run else "")
    lines = [f"# {title}", "",
             f"- device: {facts['device']} (compute capability {facts['arch']}, {facts['devices']} device(s))",
             f"- torch {facts['torch']}, CUDA {facts['cuda']}, {facts['cores']} CPU cores",
             f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
             f"- total: {sum(o.seconds for o in outcomes):.0f} s", "",
             "| step | result | seconds | timeout s |", "|---|---|---:|---:|"]
    lines += [f"| {o.step.name} | {o.status} | {o.seconds:.1f} | {o.step.timeout} |" for o in outcomes]
    for o in outcomes:
        if o.status != "pass" and o.output:
            tail = "\n".join(o.output.rstrip().splitlines()[-TAIL_LINES:])
            lines += ["", f"## {o.step.name}: {o.status} (last {TAIL_LINES} lines)", "", "```", tail, "```"]
    lines += ["", "## GPU benchmarks", ""] + benchmark_tables(work / "bench.json")
    throughput = next((o for o in outcomes if o.step.name == "throughput"), None)
    lines += ["", "## Scoring throughput (bf16, batch 32, CUDA graphs)", ""]
    lines += throughput_table(throughput.output if throughput else "")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-dir", default=os.environ.get("REPORT_DIR", "gpu-report"))
    parser.add_argument("--dry-run", action="store_true", help="no GPU: check the pipeline and report shape only")
    args = parser.parse_args()
    facts = device_facts()
    if facts["arch"] is None and not args.dry_run:
        print("gpu-check needs a CUDA device and a CUDA build of torch (see --dry-run)", file=sys.stderr)
        return 2
    out_dir = pathlib.Path(args.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        steps = dry_run_steps(work) if args.dry_run else gpu_steps(facts["arch"], work)
        outcomes = [run(step) for step in steps]
        text = report(facts, outcomes, work, args.dry_run)
    target = out_dir / "REPORT.md"
    partial = target.with_suffix(".md.tmp")
    partial.write_text(text)
    partial.replace(target)
    print(f"[gpu-check] report: {target}")
    return 0 if all(o.status == "pass" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
