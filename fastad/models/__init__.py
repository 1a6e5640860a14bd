"""Models of published anomaly-localization methods, built on fastad's ops and nn modules.
Each is an AnomalyModel registered by name (create_model("pedenet"))."""
from fastad.models.base import AnomalyModel, AnomalyResult
from fastad.models.fcdd import FCDD
from fastad.models.glance import GlanceNet
from fastad.models.patchcore import PatchCore
from fastad.models.pedenet import PEDENet, PatchEncoder, TrainingBatch, sample_training_batch
from fastad.models.raw_pixel import RawPixelKNN
from fastad.models.registry import MODELS, create_model, register_model
from fastad.models.utad import UTAD

__all__ = ["FCDD", "MODELS", "AnomalyModel", "AnomalyResult", "GlanceNet", "PEDENet", "PatchCore", "PatchEncoder", "RawPixelKNN",
           "TrainingBatch", "UTAD", "create_model", "register_model", "sample_training_batch"]
