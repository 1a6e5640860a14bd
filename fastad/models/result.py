"""AnomalyResult's former home, kept because fastad.engine imports it from here; it lives in
fastad.models.base."""
from fastad.models.base import AnomalyResult

__all__ = ["AnomalyResult"]
