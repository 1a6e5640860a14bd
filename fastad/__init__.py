"""fastad: fast operators and models for unsupervised visual anomaly localization.

    import fastad
    fastad.info()                      # what was built and loaded
    dist, index = fastad.ops.knn(query, bank, k=1)
    auroc = fastad.metrics.pixel_auroc(maps, masks)
    fastad.set_backend("reference")    # pure-PyTorch ops, e.g. when the extension is missing
"""
from fastad.version import __version__

from fastad.backend import get_backend, set_backend, use_backend
from fastad.info import info
from fastad import data, engine, metrics, models, nn, ops
from fastad.engine import Scorer

__all__ = ["__version__", "Scorer", "info", "get_backend", "set_backend", "use_backend", "data", "engine", "metrics", "models", "nn", "ops"]
