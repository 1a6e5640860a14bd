"""fastad.distributed: scoring on a Ray cluster (pip install 'fastad[ray]').

    from fastad.distributed import score_on_ray
    result = score_on_ray("runs/brick", "/mnt/line/images", "/mnt/line/scores", address="auto", device="cuda")

Importing this package does not import Ray; score_on_ray does, and says how to install it when
it is missing.
"""
from fastad.distributed.ray_scoring import DistributedScores, require_ray, score_on_ray

__all__ = ["DistributedScores", "require_ray", "score_on_ray"]
