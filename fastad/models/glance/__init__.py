"""glance: the model (model.py) and its parts; see README.md for the design and measured numbers."""
from fastad.models.glance.model import GlanceNet

__all__ = ["GlanceNet"]
