"""Summarises pytest-benchmark JSON files as a Markdown table: per group, each contender's median
time and its ratio to fastad (above 1x: fastad is faster).

    pytest benchmarks/test_knn_bench.py --benchmark-group-by=group --benchmark-json=FILE
    python benchmarks/summarize.py FILE [FILE ...]

With several files (say a default run and a single-threaded one) each gets its own pair of
columns, labelled by its file name; a contender missing from a file shows "–".
"""
from __future__ import annotations

import argparse
import json
import os

BASELINE = "fastad"


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def contender_of(bench: dict) -> str:
    """The contender a benchmark times: extra_info["contender"], else the test's name."""
    return bench.get("extra_info", {}).get("contender") or bench["name"]


def medians(data: dict) -> dict[str, dict[str, float]]:
    """{group: {contender: median seconds}} in file order."""
    out: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        out.setdefault(bench.get("group") or "(no group)", {})[contender_of(bench)] = bench["stats"]["median"]
    return out


def summarize(runs: dict[str, dict]) -> str:
    """runs: {label: pytest-benchmark JSON}. Returns the Markdown table."""
    tables = {label: medians(data) for label, data in runs.items()}
    groups: dict[str, list[str]] = {}
    for table in tables.values():
        for group, stats in table.items():
            names = groups.setdefault(group, [])
            names += [name for name in stats if name not in names]
    multi = len(runs) > 1
    header = "| group | contender |"
    rule = "|---|---|"
    for label in runs:
        suffix = f" ({label})" if multi else ""
        header += f" median{suffix} | contender / {BASELINE}{suffix} |"
        rule += "---:|---:|"
    lines = [header, rule]
    first = next(iter(tables.values()))
    for group, names in groups.items():
        key = first.get(group, {})
        names.sort(key=lambda name: (name != BASELINE, key.get(name, float("inf"))))
        for row, name in enumerate(names):
            line = f"| {f'`{group}`' if row == 0 else ''} | {name} |"
            for table in tables.values():
                stats = table.get(group, {})
                median, base = stats.get(name), stats.get(BASELINE)
                if median is None:
                    line += " – | – |"
                else:
                    ratio = f"{median / base:.2f}x" if base else "n/a"
                    line += f" {format_seconds(median)} | {ratio} |"
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_files", nargs="+", help="written by pytest --benchmark-json=FILE")
    args = parser.parse_args()
    runs = {}
    for path in args.json_files:
        with open(path) as f:
            runs[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
    print(summarize(runs))


if __name__ == "__main__":
    main()
