"""benchmarks/runner.py's rows and generated tables, on small synthetic rows files: a table
rewritten between its markers and nothing else, filters, seeds averaged, the baseline beside the
model, bench rows and their ratios, the image-score choice; and the repository's own tables are
what render writes from the committed rows."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("fastad_benchmark_runner", ROOT / "benchmarks" / "runner.py")
runner = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(runner)

STAMP = {"fastad": "0.1.0", "commit": "abc1234", "machine": "CPU X", "torch": "2", "threads": 2, "load": [1.0, 2.0],
         "date": "2026-12-01"}


def quality_row(model, data, seed, split, pixel, aupro=0.5, image=0.5, label="defaults", backbone=None):
    return {"task": "quality", "model": model, "label": label, "data": data, "seed": seed, "steps": None,
            "split": split, "backbone": backbone, "pixel_auroc": pixel, "aupro": aupro, "image_auroc": image,
            "stamp": STAMP}


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_quality_table_is_rewritten_between_its_markers_with_seeds_averaged(tmp_path):
    rows = [quality_row("patchcore", "wide:brick", 0, "test", 0.90, backbone="lite0"),
            quality_row("patchcore", "wide:brick", 1, "test", 0.80, backbone="lite0"),
            quality_row("patchcore", "wide:moon", 0, "test", 0.70, backbone="lite0"),
            quality_row("rawpixel", "wide:brick", 0, "test", 0.60),
            quality_row("fcdd", "wide:brick", 0, "test", 0.10)]
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- table: quality model=patchcore data=wide:* -->\nstale\n<!-- end table -->\nafter\n")
    runner.main(["--rows", str(write_rows(tmp_path / "rows.jsonl", rows)), "render", str(page)])
    text = page.read_text()
    assert text.startswith("before\n<!-- table: quality model=patchcore data=wide:* -->\n| model (backbone) |")
    assert text.endswith("<!-- end table -->\nafter\n") and "stale" not in text
    lines = text.splitlines()
    assert "| rawpixel (-) | test | 1 | .600/.500/.500 |  | .600/.500/.500 |" in lines   # the baseline, first
    # brick: the mean of seeds 0 and 1 (.850); the mean column: over datasets (.850 and .700)
    assert "| patchcore (lite0) | test | 2 | .850/.500/.500 | .700/.500/.500 | .775/.500/.500 |" in lines
    assert not any(line.startswith("| fcdd") for line in lines)                     # filtered out
    assert "from 4 rows: fastad 0.1.0, commit abc1234, CPU X, 2 threads, load 1.0–2.0, 2026-12-01." in text


def test_render_leaves_a_file_without_markers_and_refuses_an_unknown_kind(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", [quality_row("rawpixel", "wide:brick", 0, "test", 0.6)])
    plain = tmp_path / "plain.md"
    plain.write_text("no tables here\n")
    runner.main(["--rows", str(rows), "render", str(plain)])
    assert plain.read_text() == "no tables here\n"
    odd = tmp_path / "odd.md"
    odd.write_text("<!-- table: qualty model=x -->\n<!-- end table -->\n")
    with pytest.raises(SystemExit, match="qualty.*unknown table kind"):
        runner.main(["--rows", str(rows), "render", str(odd)])


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(quality_row("rawpixel", "wide:brick", 0, "test", 0.6)) + "\n{\"task\": \"qua")
    assert [r["model"] for r in runner.read_rows(path)] == ["rawpixel"]


def benchmark(group, contender, median, rounds=3):
    return {"group": group, "name": f"test_op[{contender}]", "fullname": f"benchmarks/test_x_bench.py::test_op[{contender}]",
            "params": {"contender": contender}, "extra_info": {"contender": contender},
            "stats": {"median": median, "min": median * 0.9, "rounds": rounds}}


def test_bench_rows_carry_the_ratio_to_fastad_and_the_table_shows_the_latest_run(tmp_path):
    first = runner.bench_rows({"benchmarks": [benchmark("op cpu", "fastad", 0.002), benchmark("op cpu", "reference", 0.5),
                                              benchmark("other", "solo", 3.0)]}, STAMP, "2026-12-01T10:00:00")
    assert [(r["name"], r["ratio"]) for r in first] == [("fastad", 1.0), ("reference", 250.0), ("solo", None)]
    assert first[0]["suite"] == "test_x_bench.py" and first[0]["rounds"] == 3
    later = runner.bench_rows({"benchmarks": [benchmark("op cpu", "reference", 0.004),
                                              benchmark("op cpu", "fastad", 0.001)]}, STAMP, "2026-12-01T11:00:00")
    table = runner.bench_table(first + later, {"group": "op*"})
    lines = table.splitlines()
    assert lines[2:4] == ["| `op cpu` | fastad | 1.0 ms | 1.00x | 3 |", "|  | reference | 4.0 ms | 4.00x | 3 |"]
    assert "other" not in table and "250" not in table and "from 2 rows" in table


def image_score_row(model, data, seed, split, rules, families=None):
    return {"task": "image-score", "model": model, "label": "defaults", "data": data, "seed": seed, "steps": None,
            "split": split, "backbone": None, "rules": rules, "families": families or {}, "stamp": STAMP}


def rules(max_value, q99, norm=None):
    values = dict.fromkeys(runner.IMAGE_SCORE_RULES, max_value)
    values.update({"q0.99": q99, "norm_max": norm, "norm_smooth_top1": norm})
    return values


def test_the_image_score_choice_needs_the_margin_on_val():
    rows = [image_score_row("a", "wide:brick", 0, "val", rules(0.60, 0.65)),        # +0.05: q0.99 chosen
            image_score_row("a", "wide:brick", 0, "test", rules(0.70, 0.60)),
            image_score_row("b", "wide:brick", 0, "val", rules(0.60, 0.61, norm=0.9)),  # +0.01: max kept
            image_score_row("b", "wide:brick", 1, "val", rules(0.70, 0.71, norm=0.9))]
    lines = runner.image_score_table(rows, {}).splitlines()
    a_val = next(line for line in lines if line.startswith("| a (-) | val |"))
    assert a_val.endswith("| q0.99 |") and "| n/a |" in a_val                         # norm_* unusable: n/a
    b_val = next(line for line in lines if line.startswith("| b (-) | val |"))
    assert b_val.startswith("| b (-) | val | 1 | 0.650 | 0.660 |") and b_val.endswith("| 0.900 | 0.900 | max |")


def test_the_families_table_averages_each_family_over_datasets():
    rows = [image_score_row("a", "wide:brick", 0, "val", rules(0.6, 0.6), {"hole": [1.0, 0.8], "swirl": [0.5, 0.4]}),
            image_score_row("a", "wide:moon", 0, "val", rules(0.6, 0.6), {"hole": [0.8, 0.6]}),
            image_score_row("a", "wide:moon", 0, "test", rules(0.6, 0.6), {"hole": [0.7, 0.7]})]
    lines = runner.families_table(rows, {"split": "*"}).splitlines()
    assert "| a (-) | hole | 0.90 / 0.70 | 0.70 / 0.70 |" in lines
    assert "| a (-) | swirl | 0.50 / 0.40 |  |" in lines
    assert runner.families_table(rows, {"split": "val"}).splitlines()[0] == "| model (backbone) | family | val |"


def test_splits_and_maps_files():
    assert runner.splits_of("wide:brick") == ("val", "test")
    assert runner.splits_of("wide:brick", "val") == ("val",)
    with pytest.raises(SystemExit, match="--split val: builtin:brick has only the test split"):
        runner.splits_of("builtin:brick", "val")
    key = {"model": "patchcore", "label": "image_size=320", "data": "wide:brick", "seed": 1, "steps": None}
    assert runner.maps_file(Path("m"), key) == Path("m/patchcore-image_size=320_wide-brick_s1.pt")


def test_the_repository_tables_are_what_render_writes():
    rows = [r for path in sorted(runner.ROWS_DIR.glob("*.jsonl")) for r in runner.read_rows(path)]
    for pattern in runner.TABLE_FILES:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text()
            assert runner.render_text(text, rows) == text, f"{path}: run `python benchmarks/runner.py render`"


def test_bench_passes_every_argument_after_it_to_pytest(monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "bench", lambda args: seen.append((args.rows, args.pytest)))
    runner.main(["--rows", "r.jsonl", "bench", "-m", "not cuda", "benchmarks/test_gmm_bench.py", "-k", "cpu"])
    runner.main(["bench"])
    assert seen == [("r.jsonl", ["-m", "not cuda", "benchmarks/test_gmm_bench.py", "-k", "cpu"]), (None, [])]


def knn_row(run, d, kernel, fastad_ms, machine="CPU X"):
    info = {"contender": "fastad+faiss-flat+torch-cdist", "kernel": kernel, "clock_ghz": 3.0, "threads": 2,
            "gflops": 2 * 4096 * 65536 * d / fastad_ms / 1e6, "peak_gflops": 192.0,
            "fraction_of_peak": 2 * 4096 * 65536 * d / fastad_ms / 1e6 / 192.0,
            "median_ms": {"fastad": fastad_ms, "faiss-flat": 2 * fastad_ms, "torch-cdist": 3 * fastad_ms},
            "faiss_over_fastad": {"median": 2.0, "min": 1.9, "max": 2.1},
            "cdist_over_fastad": {"median": 3.0, "min": 2.8, "max": 3.2}}
    return {"task": "bench", "run": run, "suite": "test_knn_bench.py", "group": f"knn alternating D={d} k=1",
            "name": info["contender"], "test": f"benchmarks/test_knn_bench.py::test_knn_alternating_with_faiss[{d}]",
            "params": {"n": 4096, "m": 65536, "d": d, "k": 1}, "median": 1.0, "min": 1.0, "rounds": 5, "ratio": None,
            "extra_info": info, "stamp": {**STAMP, "machine": machine}}


def test_the_knn_peak_table_keeps_the_latest_run_per_kernel_and_filters_by_kernel():
    rows = [knn_row("2026-12-01T10:00:00", 512, "avx2", 4000.0), knn_row("2026-12-01T11:00:00", 512, "avx2", 2000.0),
            knn_row("2026-12-01T11:00:00", 128, "avx2", 500.0), knn_row("2026-12-01T12:00:00", 512, "avx512", 1000.0)]
    lines = runner.knn_peak_table(rows, {"kernel": "avx2"}).splitlines()
    body = [line for line in lines if line.startswith("| 128") or line.startswith("| 512")]
    assert [line.split(" | ")[0] for line in body] == ["| 128", "| 512"]     # by D, the latest 512 run only
    assert "| 2.00 s | 4.00 s | 6.00 s | **2.00x** (1.90–2.10) | **3.00x** (2.80–3.20) | 137 | 72% | 36% |" in body[1]
    assert "avx512" not in "\n".join(lines) and "from 2 rows" in lines[-1]


def deploy_row(contender, images_per_s, stages=None, deviation=None):
    return {"task": "deploy-throughput", "run": "2026-12-01T10:00:00", "contender": contender,
            "images_per_s": images_per_s, "p50_ms": 10.0, "p99_ms": 12.0, "model": "patchcore",
            "backbone": "efficientnet_lite0", "image_size": 320, "bank": [6400, 152], "batch_size": 32,
            "map_deviation": deviation, "stages": stages, "versions": {"openvino": "1"}, "stamp": STAMP}


def test_the_deploy_table_gives_the_ratio_to_anomalibs_default_openvino_path():
    rows = [deploy_row("anomalib OpenVINOInferencer (bf16, default)", 20.0),
            deploy_row("fastad Scorer fp32, OpenVINO network", 50.0, {"network": 0.2, "search": 0.3, "maps": 0.01}, 1e-6)]
    lines = runner.deploy_throughput_table(rows, {}).splitlines()
    assert lines[2] == "| fastad Scorer fp32, OpenVINO network | 50.0 | 2.50x | 10.0 | 12.0 | 1.0e-06 |"
    assert lines[3] == "| anomalib OpenVINOInferencer (bf16, default) | 20.0 | 1.00x | 10.0 | 12.0 | - |"
    assert "| fastad Scorer fp32, OpenVINO network | 0.200 | 0.300 | 0.010 |" in lines
def anomalib_row(data, size, fit, score, date="2026-12-01"):
    side = {"pixel_auroc": 0.9, "aupro": 0.8, "image_auroc": None, "fit_s": fit[0], "score_s": score[0]}
    return {"task": "anomalib-patchcore", "data": data, "texture": data.removeprefix("wide:"), "size": size,
            "coreset_ratio": 0.1, "rounds": 3, "anomalib_version": "2.7.0", "bank": [4096, 4095],
            "fastad": side, "anomalib": {**side, "image_auroc": 0.75, "fit_s": fit[1], "score_s": score[1]},
            "stamp": {**STAMP, "date": date}}


def test_the_anomalib_patchcore_table_shows_both_sides_of_the_latest_row_and_their_ratios(tmp_path):
    rows = [anomalib_row("wide:brick", 256, (50.0, 400.0), (10.0, 12.0)),
            anomalib_row("wide:brick", 256, (40.0, 440.0), (14.0, 15.4), date="2026-12-02"),   # the later run
            anomalib_row("wide:moon", 256, (1.0, 2.0), (1.0, 2.0)),
            {"task": "patchcore-fit", "data": "wide:brick", "size": 256}]
    page = tmp_path / "page.md"
    page.write_text("<!-- table: anomalib-patchcore data=wide:brick -->\n(no rows yet)\n<!-- end table -->\n")
    runner.main(["--rows", str(write_rows(tmp_path / "rows.jsonl", rows)), "render", str(page)])
    lines = page.read_text().splitlines()
    assert lines[1].startswith("| texture | size | bank | implementation | pixel AUROC | AUPRO@0.3 | image AUROC |")
    assert lines[3] == "| brick | 256 | 4,096 | fastad | 0.900 | 0.800 | n/a | 40.0 | 14.00 | 1.00x | 1.00x | 1.0–2.0 |"
    assert lines[4] == "|  | 256 | 4,095 | anomalib 2.7.0 | 0.900 | 0.800 | 0.750 | 440.0 | 15.40 | 11.00x | 1.10x | 1.0–2.0 |"
    assert not any("moon" in line or "400.0" in line for line in lines)
    assert "median of 3 rounds" in lines[6] and "from 1 rows" in lines[6] and "2026-12-02." in lines[6]
    assert runner.anomalib_patchcore_table(rows, {"size": "128"}).startswith("(no rows yet: run `python benchmarks/")
