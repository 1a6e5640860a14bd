"""Export to line runtimes: fastad.deploy.export writes a checkpoint's scoring graph as an ONNX or
OpenVINO artefact (graph + metadata.json), fastad.deploy.load runs one with ONNX Runtime or
OpenVINO and returns fastad's AnomalyResult. Needs the `deploy` extra (pip install fastad[deploy])."""
from fastad.deploy.export import FORMATS, EXPORT_PRECISIONS, export
from fastad.deploy.inferencer import RUNTIMES, Inferencer, load
from fastad.deploy.lowering import LOWERINGS, UnsupportedOpError

__all__ = ["export", "load", "Inferencer", "UnsupportedOpError", "FORMATS", "EXPORT_PRECISIONS", "RUNTIMES", "LOWERINGS"]
