"""utad: the model (model.py) and its parts; see README.md for the design and measured numbers."""
from fastad.models.utad.model import UTAD

__all__ = ["UTAD"]
