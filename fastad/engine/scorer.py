"""fastad.Scorer: a trained model held ready for production-line scoring.

    scorer = fastad.Scorer("runs/brick", device="cuda", batch_size=32, precision="bf16")
    result = scorer.score(images)            # images [B, 3, H, W] float in [0, 1] or uint8
    scored = scorer.score_folder("line/today", out="line/today-scores")
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastad.checks import check_bool, check_choice, check_int, tracing_or_capturing
from fastad.engine.decision import calibrated_threshold, verdicts
from fastad.engine.checkpoint import checkpoint_path, load_checkpoint
from fastad.engine.batch_scoring import ScoredImages, score_dataset
from fastad.engine.network_engines import NETWORK_ENGINES, with_network_engine
from fastad.engine.score_run import score_folder
from fastad.models.base import AnomalyModel, AnomalyResult

SCORING_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _check_unit_range(images: torch.Tensor) -> None:
    """ValueError when float images hold values outside [0, 1] (e.g. 0..255) or NaN."""
    if tracing_or_capturing(images) or not images.numel():
        return
    low, high = torch.aminmax(images)
    if not (0.0 <= float(low) and float(high) <= 1.0):
        raise ValueError(f"float images must hold values in [0, 1], got values in [{float(low):.4g}, {float(high):.4g}]"
                         " (for 0..255 values pass a uint8 tensor or divide by 255)")


def check_scoring_options(device, batch_size: int, precision: str, cuda_graphs: bool, memory_format: str) -> torch.device:
    """The torch.device of `device`, once the options are ones a Scorer takes (see Scorer);
    ValueError / TypeError naming the option otherwise: an unknown precision or memory format,
    fp16 or CUDA graphs without a CUDA device, a batch size below 1."""
    check_choice("precision", precision, SCORING_PRECISIONS)
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    if check_bool("cuda_graphs", cuda_graphs) and device.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device")
    check_choice("memory_format", memory_format, MEMORY_FORMATS)
    check_int("batch_size", batch_size, 1)
    return device


def scoring_settings(device, batch_size: int, precision: str, cuda_graphs: bool, memory_format: str,
                     image_size: int, threshold: float | None) -> dict:
    """The settings that decide a scorer's output, as a scores folder's manifest records them:
    device, batch size, precision, CUDA graphs, memory format (its name), image size, and the
    calibrated threshold when there is one."""
    settings = {"device": str(device), "batch_size": batch_size, "precision": precision, "cuda_graphs": cuda_graphs,
                "memory_format": memory_format, "image_size": image_size}
    return settings if threshold is None else {**settings, "threshold": threshold}


def open_model(checkpoint, device) -> tuple[AnomalyModel, dict, str]:
    """(model in eval mode on `device`, checkpoint header, source) of a run folder, its
    checkpoint.safetensors or a trained AnomalyModel (moved in place; header {"model": name},
    so no threshold). source names where it came from (the checkpoint's resolved path)."""
    if isinstance(checkpoint, AnomalyModel):
        return checkpoint.to(device).eval(), {"model": checkpoint.name}, f"a {checkpoint.name} model object"
    loaded = load_checkpoint(checkpoint, device)
    return loaded.model, loaded.header, str(checkpoint_path(checkpoint).resolve())


class Scorer:
    """A checkpoint's model in eval mode on `device`, its memory bank resident there.

    Args:
        checkpoint: a run folder written by `fastad train` (or its checkpoint.safetensors), or a
            trained AnomalyModel.
        device: "cpu", "cuda", "cuda:1", ...
        batch_size: images per forward pass in score_folder (score() takes any batch).
        precision: "fp32", "bf16" (autocast on CPU and CUDA) or "fp16" (CUDA only). Nearest-
            neighbour searches and score maps stay float32 either way.
        cuda_graphs: on CUDA, capture the scoring of each new batch shape once as a CUDA graph
            and replay it (fixed-shape production batches skip the per-kernel launch cost).
        memory_format: "channels_last" (default: the model's conv weights and every batch are
            laid out NHWC, the layout oneDNN and cuDNN run fastest; the model passed in is
            converted in place) or "contiguous" (NCHW, as trained).
        network_engine: "torch" (default) or "openvino": the model's networks (its `networks`
            submodules, e.g. PatchCore's backbone) run on OpenVINO's CPU runtime at the
            precision asked (fp32 or bf16), fastad's kernels do the rest
            (fastad.engine.network_engines). CPU only; ValueError for a model that names no
            network, and ImportError without the openvino package.

    Attributes:
        scoring_model: what score() runs: the model itself, or for network_engine "openvino" a
            copy of it sharing its tensors whose networks run on OpenVINO.
        threshold: the image-score threshold of a calibrated checkpoint (its header's
            "calibration", see fastad.engine.decision), which gives every result a verdict;
            None for an uncalibrated checkpoint or a model object.
    """

    def __init__(self, checkpoint, device="cpu", batch_size: int = 8, precision: str = "fp32",
                 cuda_graphs: bool = False, memory_format: str = "channels_last", network_engine: str = "torch"):
        self.device = check_scoring_options(device, batch_size, precision, cuda_graphs, memory_format)
        check_choice("network_engine", network_engine, NETWORK_ENGINES)
        if network_engine != "torch" and self.device.type != "cpu":
            raise ValueError(f"network_engine {network_engine!r} runs on the CPU; got device {str(self.device)!r}")
        self.model, self.header, self.source = open_model(checkpoint, self.device)
        self.memory_format = MEMORY_FORMATS[memory_format]
        self.model.to(memory_format=self.memory_format)
        self.network_engine = network_engine
        self.scoring_model = with_network_engine(self.model, network_engine, precision)
        self.batch_size, self.precision, self.cuda_graphs = batch_size, precision, cuda_graphs
        self.image_size = self.model.image_size
        self.threshold = calibrated_threshold(self.header)
        self._graphs: dict[tuple, tuple] = {}

    def settings(self) -> dict:
        """The settings that decide this scorer's output (scoring_settings: what an output
        folder's manifest records)."""
        layout = next(name for name, value in MEMORY_FORMATS.items() if value == self.memory_format)
        settings = scoring_settings(self.device, self.batch_size, self.precision, self.cuda_graphs, layout,
                                    self.image_size, self.threshold)
        # recorded only off the default, so the manifests of runs scored before the option still match
        return settings if self.network_engine == "torch" else {**settings, "network_engine": self.network_engine}

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a tensor [B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
        if images.dtype == torch.uint8:
            images = images.to(self.device, non_blocking=True).float().div_(255)
        elif images.is_floating_point():
            images = images.to(self.device, torch.float32, non_blocking=True)
            _check_unit_range(images)
        else:
            raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images.contiguous(memory_format=self.memory_format)

    def _forward(self, images: torch.Tensor) -> AnomalyResult:
        dtype = SCORING_PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            result = self.scoring_model.score(images)
        return AnomalyResult(result.image_scores.float(), result.maps.float())

    def _graphed(self, images: torch.Tensor) -> AnomalyResult:
        key = tuple(images.shape)
        if key not in self._graphs:
            static_input = images.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):  # warm-up: allocator pools, lazy initialisation, cuBLAS handles
                    self._forward(static_input)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_output = self._forward(static_input)
            self._graphs[key] = (graph, static_input, static_output)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(images)
        graph.replay()
        return AnomalyResult(static_output.image_scores.clone(), static_output.maps.clone())

    def score(self, images: torch.Tensor) -> AnomalyResult:
        """images [B, 3, H, W] (float in [0, 1] or uint8, any device and size; resized to the
        model's native size; ValueError for float values outside [0, 1] or NaN) -> AnomalyResult(image_scores [B], maps [B, S, S]) on self.device,
        float32, S = the model's image_size; verdict ["ok" | "defect"] * B when the checkpoint was
        calibrated (fastad.engine.decision), else None."""
        images = self._prepare(images)
        with torch.inference_mode():
            result = self._graphed(images) if self.cuda_graphs else self._forward(images)
        result.verdict = verdicts(result.image_scores, self.threshold)
        return result

    __call__ = score

    def score_dataset(self, dataset, keep_maps: bool = True, num_workers: int | None = None, progress: bool = True,
                      on_batch=None, positions=None) -> ScoredImages:
        """Scores a dataset of fastad.data Samples in batches of batch_size; images that fail to
        decode are reported and skipped (see fastad.engine.batch_scoring.score_dataset)."""
        return score_dataset(self.score, dataset, self.batch_size, self.device, num_workers, keep_maps, progress,
                             on_batch, desc=f"scoring {self.model.name}", positions=positions)

    def score_folder(self, path, out=None, save_maps: str | None = "npy", overlays: bool = False,
                     num_workers: int | None = None, progress: bool = True, overwrite: bool = False) -> ScoredImages:
        """Scores every image file in folder `path` (decoded in DataLoader workers, pinned
        memory; unreadable files reported and skipped). With `out`, streams out/scores.csv and
        out/maps/<name>.npy (save_maps="npy") batch by batch, then out/overlays/<name>.png
        (overlays=True); the same call after an interruption resumes. `out` holding another
        run's results is refused unless overwrite=True (see fastad.engine.score_run)."""
        return score_folder(self, path, out, save_maps, overlays, num_workers, progress, overwrite)
