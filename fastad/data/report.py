"""How datasets report files they skip: by path, as a warning, and in dataset.skipped."""
from __future__ import annotations

import contextlib
import sys
import warnings


class SkippedImageWarning(UserWarning):
    """An image (or its mask) could not be read and was left out of the dataset."""


def report_skipped(skipped: list, path, reason: str) -> None:
    """Appends (path, reason) to skipped and warns with the path, so a run goes on and says why."""
    skipped.append((str(path), reason))
    warnings.warn(f"skipping {path}: {reason}", SkippedImageWarning, stacklevel=3)


def summarize(dataset) -> str:
    """One line: how many samples a dataset has, how many are anomalous, how many files it skipped."""
    labels = dataset.labels()
    anomalous = sum(1 for label in labels if label == 1)
    unlabelled = sum(1 for label in labels if label == -1)
    parts = [f"{len(labels)} images", f"{anomalous} anomalous"]
    if unlabelled:
        parts.append(f"{unlabelled} unlabelled")
    parts.append(f"{len(dataset.skipped)} skipped as unreadable")
    return ", ".join(parts)


@contextlib.contextmanager
def warnings_to_stderr():
    """For command-line paths: every warning raised inside (SkippedImageWarning always, even when
    repeated) is printed at once, one line, `warning: <message>`, on stderr, so a long run
    reports each bad file as it meets it."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SkippedImageWarning)
        warnings.showwarning = show
        yield
