"""nn.Modules over fastad's ops."""
from fastad.nn.nearest_neighbor import NearestNeighborScorer
from fastad.nn.partial_conv import PartialConv2d

__all__ = ["NearestNeighborScorer"]
