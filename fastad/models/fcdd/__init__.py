"""fcdd: the model (model.py) and its parts; see README.md for the design and measured numbers."""
from fastad.models.fcdd.model import FCDD

__all__ = ["FCDD"]
