"""Training, checkpoints, batch scoring and evaluation shared by every fastad model."""
from fastad.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fastad.engine.trainer import resume, train

__all__ = ["Checkpoint", "load_checkpoint", "resume", "save_checkpoint", "train"]
