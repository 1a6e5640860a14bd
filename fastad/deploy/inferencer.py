"""fastad.deploy.load: an exported artefact run by ONNX Runtime or OpenVINO, returning the same
AnomalyResult as fastad.Scorer.score.

    inferencer = fastad.deploy.load("deploy/brick")                 # runtime from the format
    result = inferencer.score(images)       # images [B, 3, H, W] float in [0, 1] or uint8
    inferencer.score_folder("line/today", out="line/today-scores")   # streaming, resumable
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastad.checks import check_choice, check_int
from fastad.engine.batch_scoring import score_dataset
from fastad.engine.decision import VERDICTS
from fastad.engine.score_run import score_folder
from fastad.models.base import AnomalyResult

RUNTIMES = ("onnxruntime", "openvino")
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
METADATA_FILE = "metadata.json"


def load(folder, runtime: str | None = None, batch_size: int = 8, num_threads: int | None = None) -> Inferencer:
    """The Inferencer of the artefact folder written by fastad.deploy.export (see Inferencer)."""
    return Inferencer(folder, runtime, batch_size, num_threads)


class ArtefactIdentity(nn.Module):
    """What identifies an artefact in a scoring run's manifest: the model name and, as its only
    buffer, the sha256 of the graph file (a score run resumes only onto the same graph)."""

    def __init__(self, name: str, graph_file: Path):
        super().__init__()
        self.name = name
        digest = hashlib.sha256(graph_file.read_bytes()).digest()
        self.register_buffer("graph_sha256", torch.frombuffer(bytearray(digest), dtype=torch.uint8))


class Inferencer:
    """An artefact folder (metadata.json + the graph file) loaded into a runtime on the CPU.

    Args:
        folder: written by fastad.deploy.export / `fastad export`.
        runtime: "onnxruntime" (ONNX artefacts) or "openvino" (either format); default by format.
        batch_size: images per runtime call in score_folder / score_dataset (score() takes any).
        num_threads: the runtime's intra-op threads (default: the runtime's own choice).

    Attributes:
        image_size, threshold (None for an uncalibrated checkpoint), metadata, runtime.

    Raises FileNotFoundError naming a missing file, ValueError naming a bad metadata key.
    """

    def __init__(self, folder, runtime: str | None = None, batch_size: int = 8, num_threads: int | None = None,
                 metadata: dict | None = None):
        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder) if metadata is None else metadata
        self.runtime = DEFAULT_RUNTIME[self.metadata["format"]] if runtime is None else runtime
        check_choice("runtime", self.runtime, RUNTIMES)
        if self.runtime == "onnxruntime" and self.metadata["format"] != "onnx":
            raise ValueError(f"runtime 'onnxruntime' needs an ONNX artefact; {self.folder} holds "
                             f"{self.metadata['format']!r} (use runtime 'openvino')")
        check_int("batch_size", batch_size, 1)
        self.batch_size = batch_size
        self.image_size = int(self.metadata["input"]["image_size"])
        self.threshold = self.metadata.get("threshold")
        self.uint8 = self.metadata["input"]["dtype"] == "uint8"
        graph = self.folder / self.metadata["file"]
        if not graph.is_file():
            raise FileNotFoundError(f"{graph}: the artefact's graph file is missing")
        self.model = ArtefactIdentity(self.metadata["model"], graph)
        self.source = str(graph.resolve())
        self._run = _onnxruntime(graph, num_threads) if self.runtime == "onnxruntime" else \
            _openvino(graph, num_threads, self.metadata["precision"])

    def settings(self) -> dict:
        """What decides this inferencer's output (a scoring run's manifest records it)."""
        settings = {"runtime": self.runtime, "format": self.metadata["format"], "precision": self.metadata["precision"],
                    "batch_size": self.batch_size, "image_size": self.image_size, "device": "cpu"}
        return settings if self.threshold is None else {**settings, "threshold": self.threshold}

    def _prepare(self, images: torch.Tensor) -> np.ndarray:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a tensor [B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
        size = (self.image_size, self.image_size)
        if self.uint8:
            if images.dtype != torch.uint8 or tuple(images.shape[-2:]) != size:
                raise TypeError(f"this artefact takes uint8 images [B, 3, {size[0]}, {size[1]}], got "
                                f"{images.dtype} {tuple(images.shape)}")
            return images.cpu().contiguous().numpy()
        if images.dtype == torch.uint8:
            images = images.cpu().float().div_(255)
        elif images.is_floating_point():
            images = images.cpu().float()
        else:
            raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return images.contiguous().numpy()

    def score(self, images: torch.Tensor) -> AnomalyResult:
        """images [B, 3, H, W] (float in [0, 1] or uint8, any size, resized like fastad.Scorer;
        uint8 at the native size for a uint8 artefact) -> AnomalyResult(image_scores [B],
        maps [B, S, S]) float32 on the CPU, verdict when calibrated."""
        outputs = self._run(self._prepare(images))
        result = AnomalyResult(torch.from_numpy(np.asarray(outputs[0], np.float32)).clone(),
                               torch.from_numpy(np.asarray(outputs[1], np.float32)).clone())
        if self.threshold is not None:
            result.verdict = [VERDICTS[int(bool(v))] for v in np.asarray(outputs[2]).tolist()]
        return result

    __call__ = score

    def score_dataset(self, dataset, keep_maps: bool = True, num_workers: int | None = None, progress: bool = True,
                      on_batch=None, positions=None):
        """As fastad.Scorer.score_dataset, through the runtime."""
        return score_dataset(self.score, dataset, self.batch_size, "cpu", num_workers, keep_maps, progress,
                             on_batch, desc=f"scoring {self.model.name} ({self.runtime})", positions=positions)

    def score_folder(self, path, out=None, save_maps: str | None = "npy", overlays: bool = False,
                     num_workers: int | None = None, progress: bool = True, overwrite: bool = False):
        """As fastad.Scorer.score_folder (streamed, resumable scores.csv and maps), through the runtime."""
        return score_folder(self, path, out, save_maps, overlays, num_workers, progress, overwrite)


def read_metadata(folder: Path) -> dict:
    """metadata.json of an artefact folder; FileNotFoundError / ValueError naming the file."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an exported fastad artefact (no {METADATA_FILE}; write one with "
                                f"`fastad export`)")
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    for key in ("format", "file", "model", "input", "precision"):
        if key not in metadata:
            raise ValueError(f"{path}: the metadata has no {key!r}")
    check_choice(f"{path} 'format'", metadata["format"], DEFAULT_RUNTIME)
    return metadata


def _onnxruntime(graph: Path, num_threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads is not None:
        check_int("num_threads", num_threads, 1)
        options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _openvino(graph: Path, num_threads: int | None, precision: str):
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f16" if precision == "fp16" else "f32"}
    if num_threads is not None:
        check_int("num_threads", num_threads, 1)
        config["INFERENCE_NUM_THREADS"] = num_threads
    compiled = ov.Core().compile_model(str(graph), "CPU", config)
    request = compiled.create_infer_request()

    def run(images):
        results = request.infer({0: images})
        return [results[output] for output in compiled.outputs]
    return run
