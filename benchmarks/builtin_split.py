"""The tensors the quality scripts evaluate on: one builtin texture's train and test splits."""
from __future__ import annotations

import torch

import fastad


def load_builtin(texture: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """builtin:<texture> at size x size -> (train images [N, 3, S, S], test images [T, 3, S, S],
    test masks [T, S, S] bool, test labels [T])."""
    train = fastad.data.open_dataset(f"builtin:{texture}", "train", size=size)
    test = fastad.data.open_dataset(f"builtin:{texture}", "test", size=size)
    samples = [test[i] for i in range(len(test))]
    return (torch.stack([train[i].image for i in range(len(train))]), torch.stack([s.image for s in samples]),
            torch.stack([s.mask for s in samples]), torch.tensor([s.label for s in samples]))
