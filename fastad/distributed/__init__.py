"""fastad.distributed: scoring on a Ray cluster (pip install 'fastad[ray]').

    from fastad.distributed import score_dataset
    result = score_dataset("runs/brick", "/shared/images", "/shared/scores", address="auto", device="cuda")

Importing this package does not import Ray; score_dataset does, and says how to install it when
it is missing.
"""
from fastad.distributed.ray_scoring import DistributedScores, require_ray, score_dataset

__all__ = ["DistributedScores", "require_ray", "score_dataset"]
