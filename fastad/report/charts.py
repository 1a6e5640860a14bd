"""The report's charts, drawn with matplotlib into SVG text that the page holds inline.

Each function returns one <svg> element (no XML declaration or DOCTYPE, text kept as text, no
date), so the page needs no file and no network to show it.
"""
from __future__ import annotations

import io
import re

import numpy as np

MAX_POINTS = 600  # curve points drawn: enough for a smooth line, few enough for a small page
NORMAL_COLOUR, DEFECT_COLOUR, ALL_COLOUR = "#1f77b4", "#d55e00", "#555555"  # colour-blind-safe pair


def _figure():
    from matplotlib.figure import Figure  # imported on first use: slow import

    figure = Figure(figsize=(5.2, 3.2), dpi=96, layout="constrained")
    return figure, figure.add_subplot()


def svg_text(figure) -> str:
    """figure -> its <svg ...>...</svg> element."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fastad"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return re.sub(r"^.*?(?=<svg)", "", text, count=1, flags=re.S)


def score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> str:
    """Histogram of image scores [N] (normal and defective apart when labels [N] hold both 0 and
    1), with the threshold drawn when there is one."""
    figure, axes = _figure()
    bins = np.histogram_bin_edges(scores, bins=min(60, max(10, int(np.sqrt(len(scores))))))
    normal, defective = labels == 0, labels == 1
    if normal.any() and defective.any():
        axes.hist(scores[normal], bins=bins, color=NORMAL_COLOUR, alpha=0.7, label=f"normal ({normal.sum()})")
        axes.hist(scores[defective], bins=bins, color=DEFECT_COLOUR, alpha=0.7,
                  label=f"defective ({defective.sum()})")
    else:
        axes.hist(scores, bins=bins, color=ALL_COLOUR, alpha=0.8, label=f"all images ({len(scores)})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set_xlabel("image score")
    axes.set_ylabel("images")
    axes.legend(loc="upper right", fontsize="small")
    return svg_text(figure)


def thin(x: np.ndarray, y: np.ndarray, limit: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A curve (x nondecreasing) cut at x <= limit and reduced to at most MAX_POINTS points, the
    first and last kept."""
    if limit is not None:
        keep = x <= limit
        x, y = x[keep], y[keep]
    if len(x) > MAX_POINTS:
        pick = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
        x, y = x[pick], y[pick]
    return x, y


def curve(x: np.ndarray, y: np.ndarray, label: str, xlabel: str, ylabel: str, xlimit: float = 1.0) -> str:
    """One curve (already thinned) from 0 to xlimit, with the chance diagonal of a ROC when xlimit is 1."""
    figure, axes = _figure()
    axes.plot(x, y, color=DEFECT_COLOUR, label=label)
    if xlimit == 1.0:
        axes.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="chance")
    axes.set_xlim(0, xlimit)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(loc="lower right", fontsize="small")
    return svg_text(figure)
