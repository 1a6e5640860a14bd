"""nn.Modules over fastad's ops."""
from fastad.nn.gaussian_mixture_head import GaussianMixtureHead
from fastad.nn.nearest_neighbor import NearestNeighborScorer

__all__ = ["NearestNeighborScorer", "GaussianMixtureHead"]
