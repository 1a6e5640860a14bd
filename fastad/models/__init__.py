"""Models of published anomaly-localization methods, built on fastad's ops and nn modules."""
from fastad.models.pedenet import PEDENet, PatchEncoder, TrainingBatch, sample_training_batch
from fastad.models.result import AnomalyResult

__all__ = ["AnomalyResult", "PEDENet", "PatchEncoder", "TrainingBatch", "sample_training_batch"]
