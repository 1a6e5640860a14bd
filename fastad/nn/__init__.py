"""nn.Modules over fastad's ops."""
from fastad.nn.gaussian_mixture_head import GaussianMixtureHead
from fastad.nn.nearest_neighbor import NearestNeighborScorer
from fastad.nn.partial_conv import PartialConv2d
from fastad.nn.score_map_upsampler import ScoreMapUpsampler

__all__ = ["NearestNeighborScorer", "GaussianMixtureHead", "ScoreMapUpsampler", "PartialConv2d"]
