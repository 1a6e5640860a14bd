"""The exact threshold sweep behind every curve metric: one descending sort of all scores,
grouped at tied scores, so each group end is one threshold (score >= t) of the curve."""
from __future__ import annotations

import torch


def descending_groups(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [M], ends [G]) for flat `scores` [M].

    `order` sorts the scores in descending order; `ends` are the positions in that order of the
    last element of each run of equal scores, increasing, the last one M - 1. Thresholding at
    the g-th distinct score (from the top) predicts exactly order[: ends[g] + 1]."""
    sorted_scores, order = torch.sort(scores, descending=True)
    change = sorted_scores[1:] != sorted_scores[:-1]
    ends = torch.nonzero(change).flatten()
    last = torch.tensor([scores.numel() - 1], dtype=ends.dtype)
    return order, torch.cat([ends, last])


def positive_counts(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tp [G], fp [G]) int64: positives and negatives with score >= each distinct score, from the
    highest distinct score down (flat `scores` [M], `positive` bool [M])."""
    order, ends = descending_groups(scores)
    tp = torch.cumsum(positive[order], dim=0, dtype=torch.int64)[ends]
    fp = ends + 1 - tp
    return tp, fp
