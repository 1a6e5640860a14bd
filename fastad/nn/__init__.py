"""nn.Modules over fastad's ops."""
from fastad.nn.nearest_neighbor import NearestNeighborScorer

__all__ = ["NearestNeighborScorer"]
