"""A model's scoring as a plain forward(images) -> (image_scores, maps), for torch.export and
torch.compile.

    program = export_scoring(model, example_images)      # torch.export.ExportedProgram
    torch.export.save(program, "pedenet.pt2")
"""
from __future__ import annotations

import torch
from torch import nn

from fastad.models.base import AnomalyModel


class ScoringModule(nn.Module):
    """forward(images [B, 3, H, W]) -> (image_scores [B], maps [B, H, W]) of a trained model."""

    def __init__(self, model: AnomalyModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.model.score(images)
        return result.image_scores, result.maps


def scoring_module(model: AnomalyModel) -> ScoringModule:
    """The model's score() as an nn.Module returning a tuple (what compilers and exporters take)."""
    return ScoringModule(model)


def export_scoring(model: AnomalyModel, example_images: torch.Tensor, dynamic_batch: bool = True):
    """torch.export of the model's scoring graph at the example's image size; the batch dimension
    is dynamic unless dynamic_batch=False. fastad's ops appear in the graph as fastad:: ops."""
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(scoring_module(model), (example_images,), dynamic_shapes=dynamic_shapes, strict=False)
