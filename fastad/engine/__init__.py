"""Training, checkpoints, batch scoring and evaluation shared by every fastad model."""
from fastad.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fastad.engine.scorer import Scorer
from fastad.engine.trainer import resume, train

__all__ = ["Checkpoint", "Scorer", "load_checkpoint", "resume", "save_checkpoint", "train"]
