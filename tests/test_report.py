"""The HTML inspection report: what the page holds and links (checked without a browser), the
overlay pictures, bad input (no scores.csv, a half-finished run, another version's folder), and
the page in headless Chromium (console errors, images that did not load, filtering, search)."""
import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

import fastad
from fastad import cli
from fastad.engine.batch_scoring import ScoredImages
from fastad.engine.pipeline import calibrate_run
from fastad.engine.evaluation import compute_metrics
from fastad.engine.results import annotate, colour_table, heat_colours, map_scale
from fastad.report import ReportRow, read_scores_dir, report_scores, write_report
from fastad.report.charts import MAX_POINTS
from fastad.report.evaluation import evaluation_data, per_defect, subset
from fastad.report.thumbnails import THUMB_SIZE, shared_scale
from browser import Chromium, find_chromium
from conftest import train_rawpixel_run, write_gravel_pngs

N_IMAGES = 10
ARTIFACTS = Path(os.environ.get("FASTAD_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(scoring folder with a report written by `fastad score --report`, its images folder): 10
    gravel crops and one broken file, scored by a raw-pixel checkpoint calibrated on them at a
    false-reject rate of 0.2 (so two are defects)."""
    root = tmp_path_factory.mktemp("report")
    run = train_rawpixel_run(root / "run")
    images = write_gravel_pngs(root / "line", "test", range(N_IMAGES))
    (images / "broken.png").write_bytes(b"not a png")
    calibrate_run(run, images, false_reject=0.2, progress=False)
    out = root / "out"
    assert cli.main(["score", "--checkpoint", str(run), "--images", str(images), "--out", str(out),
                     "--workers", "0", "--report"]) == 0
    return out, images


class Links(HTMLParser):
    """Collects src / href attributes, and the text inside each element with an id (ids)."""

    VOID = {"img", "meta", "input", "br", "hr", "link", "source"}

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.open = [], {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[key] for key in ("src", "href") if attrs.get(key)]
        if tag not in self.VOID:
            self.open.append((tag, attrs.get("id")))
            if attrs.get("id"):
                self.ids.setdefault(attrs["id"], "")

    def handle_data(self, data):
        for _, name in self.open:
            if name:
                self.ids[name] += data

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text())
    return links


def csv_rows(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_page_links_exist_and_counts_match_scores_csv(scored):
    out, _ = scored
    page = out / "report.html"
    links = parse(page)
    text = page.read_text()
    assert "http://" not in " ".join(links.links) and "https://" not in " ".join(links.links)
    assert "<link" not in text and "@import" not in text  # nothing fetched but the files linked
    assert not re.search(r"url\((?!#)", text)  # only the charts' references to their own clip paths
    for link in links.links:
        assert (page.parent / unquote(link)).is_file(), link
    rows = csv_rows(out)
    gallery = json.loads(links.ids["rows-data"])
    assert len(rows) == N_IMAGES and len(gallery) == N_IMAGES
    assert [g[1] for g in gallery] == sorted((g[1] for g in gallery), reverse=True)  # worst first
    assert sorted(g[0] for g in gallery) == sorted(Path(r["path"]).name for r in rows)
    for verdict in ("ok", "defect"):
        assert int(links.ids[f"count-{verdict}"]) == sum(r["verdict"] == verdict for r in rows)
    assert int(links.ids["count-defect"]) == 2 and int(links.ids["count-skipped"]) == 1
    assert "broken.png" in links.ids["skipped"] and "cannot identify image file" in links.ids["skipped"]
    threshold = json.loads((out / "run.json").read_text())["settings"]["threshold"]
    by_name = {Path(r["path"]).name: float(r["score"]) for r in rows}
    for name, score, _, _, _, thumb, full, distance in gallery:
        assert abs(score - by_name[name]) < 1e-5 and abs(distance - (score - threshold)) < 1e-5
        assert Image.open(page.parent / unquote(thumb)).size == (THUMB_SIZE, THUMB_SIZE)
        assert unquote(full).startswith("overlays/") and (page.parent / unquote(full)).is_file()
    assert text.count("<svg") == 1  # the score histogram, inline


def test_page_states_the_run(scored):
    out, _ = scored
    manifest = json.loads((out / "run.json").read_text())
    facts = dict(read_scores_dir(out).facts)
    assert facts["model"] == "rawpixel" and facts["image-score rule"] == "max"
    assert facts["weights sha256"] == manifest["weights_sha256"][:16]
    assert "false-reject rate 0.2 on 10 normal images" in facts["threshold"]
    assert "images/s" in facts["speed"] and facts["fastad"].startswith(fastad.__version__)


def test_overlay_png_reads_on_its_own(scored):
    out, _ = scored
    picture = torch.rand(3, 64, 192)
    annotated = np.asarray(annotate(picture, (0.5, 2.0), "score 1.5 | defect"))
    bar = annotated[:64, 192 + 3 + 2]  # a column inside the colour bar, top to bottom
    table = (colour_table().numpy() * 255).round()
    assert np.abs(bar[0] - table[-1]).max() <= 1 and np.abs(bar[-1] - table[0]).max() <= 1  # high on top
    assert (annotated[64:, :100] < 128).any()  # the caption band holds dark text
    from matplotlib import colormaps

    assert torch.allclose(heat_colours(torch.tensor([[0.0, 1.0]]))[:, 0, 0],
                          torch.tensor(colormaps["viridis"](0.0)[:3], dtype=torch.float32))
    from skimage.color import rgb2lab

    lightness = rgb2lab(colour_table().numpy()[None].astype(np.float64))[0, :, 0]  # CIELAB L*
    assert (np.diff(lightness) > 0).all()  # monotonic in lightness: reads in grey and for colour-blind viewers
    saved = Image.open(next((out / "overlays").glob("*.png")))
    assert saved.width > 3 * saved.height * 0.9 and saved.height > 256  # 3 panels, bar, caption band


def test_thumbnails_share_the_sets_map_range():
    maps = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = [ReportRow(f"r{i}", f"{i}.png", None, 0.0, map=maps[i]) for i in range(5)]
    assert shared_scale(rows) == map_scale(maps)
    assert shared_scale([ReportRow("r", "r.png", None, 0.0)]) is None


def copy_folder(scored, tmp_path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(scored[0], folder)
    return folder


def test_half_finished_run_gives_a_partial_report(scored, tmp_path):
    folder = copy_folder(scored, tmp_path)
    manifest = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**manifest, "complete": False}))
    lines = (folder / "scores.csv").read_text().splitlines(keepends=True)
    (folder / "scores.csv").write_text("".join(lines[:5]) + lines[5][:7])  # killed mid-line
    page = report_scores(folder)
    links = parse(page)
    assert len(json.loads(links.ids["rows-data"])) == 4
    assert "partial: this run did not finish; 4 of 10 images scored so far" in page.read_text()
    assert links.ids["count-skipped"] == "not recorded"


def test_other_version_is_marked_or_refused(scored, tmp_path, capsys):
    folder = copy_folder(scored, tmp_path)
    manifest = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**manifest, "fastad": "0.0.1"}))
    assert f"written by fastad 0.0.1; read by fastad {fastad.__version__}" in report_scores(folder).read_text()
    rows = (folder / "scores.csv").read_text().splitlines()
    (folder / "scores.csv").write_text("\n".join(["path,score,label"] + [r.rsplit(",", 1)[0] + ",1" for r in rows[1:]]))
    assert cli.main(["report", str(folder)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "scores.csv has the header 'path,score,label' (written by fastad 0.0.1)" in error[0]


def test_folder_without_scores_csv_is_one_line(scored, tmp_path, capsys):
    assert cli.main(["report", str(scored[1])]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"fastad report: error: {scored[1]} has no scores.csv: expected the --out folder of fastad score"]
    assert cli.main(["report", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_missing_image_is_listed_not_linked(scored, tmp_path):
    folder = copy_folder(scored, tmp_path)
    images = tmp_path / "line"
    shutil.copytree(scored[1], images)
    manifest = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**manifest, "images": str(images)}))
    shutil.rmtree(folder / "overlays")
    (images / "03.png").unlink()
    rows = (folder / "scores.csv").read_text().replace(str(scored[1]), "elsewhere")  # paths no longer valid
    (folder / "scores.csv").write_text(rows)
    page = report_scores(folder, tmp_path / "pages" / "shift.html")
    links = parse(page)
    assert "03.png" in links.ids["unpictured"] and "image file not found" in links.ids["unpictured"]
    for link in links.links:
        assert (page.parent / unquote(link)).is_file(), link
    assert len(list((tmp_path / "pages" / "shift_files" / "thumbs").iterdir())) == N_IMAGES - 1


def test_an_interrupted_report_leaves_the_earlier_one(scored, tmp_path, monkeypatch):
    folder = copy_folder(scored, tmp_path)
    before = (folder / "report.html").read_text()
    thumbs = sorted(p.name for p in (folder / "report_files" / "thumbs").iterdir())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fastad.report.page.write_thumbnails", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report_scores(folder)
    assert (folder / "report.html").read_text() == before
    assert sorted(p.name for p in (folder / "report_files" / "thumbs").iterdir()) == thumbs
    assert not [p for p in folder.iterdir() if p.name.startswith(".report_files")]


def synthetic_evaluation(n_normal=6, defects=("crack", "hole"), per=3, size=16):
    """ScoredImages of normal and defective 16 px images whose maps are hot on their masks, and
    a dataset (a list of Samples) to draw them from."""
    generator = torch.Generator().manual_seed(0)
    labels, kinds, masks = [], [], []
    for kind in ["good"] * n_normal + [d for d in defects for _ in range(per)]:
        mask = torch.zeros(size, size, dtype=torch.bool)
        if kind != "good":
            corner = torch.randint(0, size - 5, (2,), generator=generator)
            mask[corner[0]:corner[0] + 4, corner[1]:corner[1] + 4] = True
        labels.append(int(kind != "good"))
        kinds.append(kind)
        masks.append(mask)
    masks = torch.stack(masks)
    maps = torch.rand(len(kinds), size, size, generator=generator) + 0.8 * masks
    scores = maps.flatten(1).max(1).values
    paths = [f"test/{k}/{i:03d}.png" for i, k in enumerate(kinds)]
    dataset = [fastad.data.sample.Sample(torch.rand(3, size, size, generator=generator), m, label, p, k)
               for m, label, p, k in zip(masks, labels, paths, kinds)]
    return ScoredImages(scores, maps, masks, torch.tensor(labels), paths, kinds, [], list(range(len(kinds)))), dataset


def test_evaluation_report_has_curves_and_metrics_per_defect(tmp_path):
    scored, dataset = synthetic_evaluation()
    record = {**compute_metrics(scored), "model": "m", "data": "d", "n_images": len(scored.paths),
              "skipped_files": [{"path": "test/crack/bad.png", "reason": "truncated"}]}
    table = per_defect(scored)
    assert [row["defect"] for row in table] == ["crack", "hole", "all"]
    for row in table:
        keep = (scored.labels == 0) | torch.tensor([d == row["defect"] or (row["defect"] == "all" and d != "good")
                                                    for d in scored.defects])
        expected = compute_metrics(subset(scored, keep))
        assert row["n_images"] == int(keep.sum()) - 6
        assert all(row[k] == pytest.approx(expected[k]) for k in ("image_auroc", "pixel_auroc", "aupro"))
    assert table[-1]["aupro"] == pytest.approx(record["aupro"])
    data = evaluation_data(scored, dataset, record, [("model", "m")], threshold=float(scored.image_scores.median()))
    fpr, tpr, _ = data.curves["roc"]
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and len(fpr) <= MAX_POINTS
    assert data.curves["pro"][0].max() <= 0.3 and f"{record['aupro']:.3f}" in data.curves["pro"][2]
    page = write_report(data, tmp_path / "eval.html")
    links = parse(page)
    assert page.read_text().count("<svg") == 3 and "per-defect" in links.ids
    assert "truncated" in links.ids["skipped"]
    assert len(list((tmp_path / "eval_files" / "thumbs").iterdir())) == len(scored.paths)


def test_eval_report_from_the_command_line(scored, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(scored[0].parent / "run", run)
    test_set = fastad.data.open_dataset("builtin:gravel", "test", size=48)
    picks = [i for i in range(len(test_set)) if test_set[i].label == 0][:3] + \
            [i for i in range(len(test_set)) if test_set[i].label == 1][:3]
    images = write_gravel_pngs(tmp_path / "test", "test", picks)
    (tmp_path / "masks").mkdir()
    for n, i in enumerate(picks):
        fastad.data.images.save_mask(test_set[i].mask, tmp_path / "masks" / f"{n:02d}.png")
    spec = f"folder:normal={images},test={images},masks={tmp_path / 'masks'}"
    assert cli.main(["eval", "--checkpoint", str(run), "--data", spec, "--report"]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    page = run / "report.html"
    links = parse(page)
    assert page.read_text().count("<svg") == 3 and "Image ROC" in page.read_text()
    assert "defect" in links.ids["per-defect"] and int(links.ids["count-skipped"]) == 0
    gallery = json.loads(links.ids["rows-data"])
    assert len(gallery) == 6 and all(unquote(g[6]).startswith("overlays/") for g in gallery)
    for link in links.links:
        assert (page.parent / unquote(link)).is_file(), link


def test_bad_report_file_name(scored, tmp_path):
    with pytest.raises(ValueError, match="must end in .html"):
        report_scores(scored[0], tmp_path / "report.txt")


BROWSER_REQUIRED = os.environ.get("FASTAD_REQUIRE_BROWSER", "") not in ("", "0")


@pytest.mark.skipif(find_chromium() is None and not BROWSER_REQUIRED,
                    reason="needs chromium (CI installs it and sets FASTAD_REQUIRE_BROWSER=1)")
def test_page_in_headless_chromium(scored):
    out, _ = scored
    rows = csv_rows(out)
    cards = "document.querySelectorAll('#grid .card')"
    with Chromium.start() as browser:
        page = browser.open((out / "report.html").as_uri())
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(ARTIFACTS / "report-first-screen.png")
        images = "[...document.querySelectorAll('#grid img')]"
        loaded = page.evaluate(f"Promise.all({images}.map(i => {{ i.loading = 'eager'; return i.complete ? 0 : "
                               "new Promise(r => { i.onload = i.onerror = r; }); })).then(() => "
                               f"{images}.map(i => [i.getAttribute('src'), i.naturalWidth > 0]))")
        assert len(loaded) == N_IMAGES and all(ok for _, ok in loaded), loaded
        assert page.evaluate(f"{cards}.length") == N_IMAGES
        page.click("button[data-verdict=defect]")
        assert page.evaluate(f"[...{cards}].map(c => c.dataset.verdict)") == ["defect"] * 2
        page.click("button[data-verdict=ok]")
        assert page.evaluate(f"{cards}.length") == sum(r["verdict"] == "ok" for r in rows)
        page.click("button[data-verdict=all]")
        page.type("#search", "07.png")
        assert page.evaluate(f"[...{cards}].map(c => c.querySelector('.name').textContent)") == ["07.png"]
        page.click("#grid .card")
        assert page.evaluate("document.getElementById('viewer').open")
        assert page.evaluate("new Promise(r => { const i = document.getElementById('viewer-image'); if (i.complete) "
                             "r(i.naturalWidth); else i.onload = i.onerror = () => r(i.naturalWidth); })") > 0
        assert page.errors == []
        assert all(url.startswith("file://") for url in page.requested), page.requested
