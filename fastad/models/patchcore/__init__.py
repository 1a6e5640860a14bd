"""PatchCore (Roth et al. 2022): a coreset memory bank of pretrained-backbone patch features."""
from fastad.models.patchcore.model import Config, PatchCore

__all__ = ["Config", "PatchCore"]
