"""The driver's side of a distributed run: the replicas' per-image rows, put back into whole
scoring batches and appended to the scores folder in input order.

Replicas finish batches in any order (and a retried task may return a batch twice); InOrder
holds a finished batch until every batch before it is written, so scores.csv and inputs.csv grow
exactly as the local engine writes them (fastad.engine.scores_folder) and a run killed at any
point resumes from them the same way.
"""
from __future__ import annotations

from collections import Counter

import torch

from fastad.engine.scores_folder import BatchWriter


class InOrder:
    """Appends replica rows ({"index", "path", "score", "error", "fingerprint"}) to `writer` one
    whole batch at a time, in input order. positions: the input positions being scored, in
    batches of batch_size (batch b holds positions [b*B, (b+1)*B)). failed: [(path, reason)] of
    the written batches' images that could not be decoded."""

    def __init__(self, writer: BatchWriter, positions: list[int], batch_size: int):
        self.writer, self.batch_size = writer, batch_size
        self.expected = Counter(position // batch_size for position in positions)
        self.queue = sorted(self.expected)  # the batches still to write, in order
        self.rows: dict[int, dict[int, dict]] = {}
        self.failed: list[tuple[str, str]] = []

    def add(self, row: dict) -> None:
        """Takes one image's row; writes every batch it completes (a row seen before is dropped:
        a retried batch scores bit-identically)."""
        batch = int(row["index"]) // self.batch_size
        if batch not in self.queue:
            return
        self.rows.setdefault(batch, {}).setdefault(int(row["index"]), row)
        while self.queue and len(self.rows.get(self.queue[0], ())) == self.expected[self.queue[0]]:
            self._write(self.rows.pop(self.queue.pop(0)))

    def _write(self, rows: dict[int, dict]) -> None:
        ordered = [rows[index] for index in sorted(rows)]
        self.failed += [(str(row["path"]), str(row["error"])) for row in ordered if row["error"]]
        good = [row for row in ordered if not row["error"]]
        if good:
            self.writer.append([int(row["index"]) for row in good], [str(row["path"]) for row in good],
                               [str(row["fingerprint"]) or None for row in good],
                               torch.tensor([float(row["score"]) for row in good], dtype=torch.float32))

    def finish(self) -> None:
        """RuntimeError naming the first batch no replica returned (Ray lost it)."""
        if self.queue:
            first = self.queue[0] * self.batch_size
            raise RuntimeError(f"the Ray run returned no result for the batch at input position {first} "
                               f"({len(self.queue)} batches missing); run the same scoring again to resume")
