"""pedenet: the model (model.py) and its parts; see README.md for the design and measured numbers."""
from fastad.models.pedenet.model import PEDENet
from fastad.models.pedenet.networks import PatchEncoder
from fastad.models.pedenet.sampling import TrainingBatch, sample_training_batch

__all__ = ["PEDENet", "PatchEncoder", "TrainingBatch", "sample_training_batch"]
