"""A checkpoint's whole scoring graph as a line-runtime artefact: ONNX or OpenVINO IR.

    folder = export("runs/brick", "deploy/brick", format="openvino")
    # deploy/brick/model.xml + model.bin (or model.onnx) and metadata.json

The graph maps images [B, 3, S, S] (float32 in [0, 1], or uint8 with input_dtype="uint8"; B
dynamic, S the model's image_size) to image_scores [B] float32 and maps [B, S, S] float32, plus
verdict [B] bool (image score > threshold) when the checkpoint was calibrated. Every fastad op
is replaced by its standard-ONNX lowering (fastad.deploy.lowering) before the conversion; an op
without one, or a model whose scoring cannot run at a dynamic batch, is refused with an
UnsupportedOpError naming it. Before anything is written the artefact is run on check images
and compared with the PyTorch scoring; the deviation goes into metadata.json, and an fp32
artefact beyond FP32_TOLERANCE is refused.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import fastad
from fastad.checks import check_choice
from fastad.deploy import lowering
from fastad.deploy.inferencer import Inferencer
from fastad.deploy.lowering import UnsupportedOpError
from fastad.engine.decision import calibrated_threshold
from fastad.engine.checkpoint import checkpoint_path, load_checkpoint
from fastad.files import write_json
from fastad.models.base import AnomalyModel

FORMATS = {"onnx": "model.onnx", "openvino": "model.xml"}
#: fp16: OpenVINO only (weights stored in float16, inference precision f16)
EXPORT_PRECISIONS = ("fp32", "fp16")
INPUT_DTYPES = ("float32", "uint8")
METADATA_FILE = "metadata.json"
OPSET = 18
#: largest relative deviation (max |a - b| / max |b|) of an fp32 artefact's scores and maps
FP32_TOLERANCE = 1e-4
#: builtin test crops the artefact is checked on before it is written
CHECK_IMAGES = 3
CHECK_DATA = "builtin:gravel"


class DeployModule(nn.Module):
    """forward(images [B, 3, S, S]) -> (image_scores [B], maps [B, S, S]) or, with a threshold,
    (image_scores, maps, verdict [B] bool = image_scores > threshold). uint8 images are divided
    by 255 inside the graph."""

    def __init__(self, model: AnomalyModel, threshold: float | None, uint8: bool):
        super().__init__()
        self.model, self.threshold, self.uint8 = model.eval(), threshold, uint8

    def forward(self, images: torch.Tensor):
        if self.uint8:
            images = images.float() / 255.0
        result = self.model.score(images)
        outputs = (result.image_scores.float(), result.maps.float())
        return outputs if self.threshold is None else (*outputs, outputs[0] > self.threshold)


def export(checkpoint, out, format: str = "onnx", precision: str = "fp32", input_dtype: str = "float32",
           check_images: torch.Tensor | None = None) -> Path:
    """Writes the artefact of the module docstring into folder `out` (created; files of an earlier
    export there are replaced only once the new artefact passed its check) and returns `out`.

    Args:
        checkpoint: a run folder written by `fastad train`, its checkpoint.safetensors, or a
            trained AnomalyModel.
        format: "onnx" (model.onnx) or "openvino" (model.xml + model.bin).
        precision: "fp32", or "fp16" (OpenVINO only).
        input_dtype: "float32" (images in [0, 1]) or "uint8" (0..255).
        check_images: [N, 3, S, S] float in [0, 1] to check the artefact on; default the first
            CHECK_IMAGES test crops of builtin:gravel at the model's size.

    Raises:
        UnsupportedOpError: an op or setting without an ONNX lowering (one line naming it), or an
            fp32 artefact deviating from PyTorch by more than FP32_TOLERANCE.
        ValueError: a bad argument, naming it.
    """
    check_choice("format", format, FORMATS)
    check_choice("precision", precision, EXPORT_PRECISIONS)
    check_choice("input_dtype", input_dtype, INPUT_DTYPES)
    if precision == "fp16" and format != "openvino":
        raise ValueError("precision 'fp16' needs format 'openvino' (ONNX artefacts are exported in fp32)")
    model, header, source = _load(checkpoint)
    threshold = calibrated_threshold(header)
    images = _check_images(check_images, model.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        module = DeployModule(model, threshold, input_dtype == "uint8")
        onnx_path = write_onnx(module, images, staging / FORMATS["onnx"], input_dtype)
        if format == "openvino":
            write_openvino(onnx_path, staging / FORMATS["openvino"], precision)
            onnx_path.unlink()
        metadata = artefact_metadata(model, header, source, format, precision, input_dtype, threshold)
        data = CHECK_DATA if check_images is None else "check_images"
        metadata["deviation"] = _checked_deviation(staging, metadata, model, images, threshold, data)
        _publish(staging, out, metadata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _load(checkpoint) -> tuple[AnomalyModel, dict, str]:
    if isinstance(checkpoint, AnomalyModel):
        return checkpoint.cpu().eval(), {"model": checkpoint.name}, f"a {checkpoint.name} model object"
    loaded = load_checkpoint(checkpoint)
    return loaded.model, loaded.header, str(checkpoint_path(checkpoint).resolve())


def _check_images(images: torch.Tensor | None, size: int) -> torch.Tensor:
    if images is None:
        dataset = fastad.data.open_dataset(CHECK_DATA, "test", size=size)
        return torch.stack([dataset[i].image for i in range(CHECK_IMAGES)])
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size) \
            or not images.is_floating_point():
        raise ValueError(f"check_images must be a float tensor [N, 3, {size}, {size}], "
                         f"got {getattr(images, 'shape', type(images).__name__)}")
    return images.float().cpu()


def exported_program(module: nn.Module, example: torch.Tensor, label: str):
    """torch.export of `module` at a dynamic batch with every fastad op replaced by its lowering;
    `label` names the module in an UnsupportedOpError."""
    batch = {0: torch.export.Dim("batch", min=1, max=1 << 16)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example,), dynamic_shapes=(batch,), strict=False)
    except (RuntimeError, TypeError, NotImplementedError) as error:  # a guard on the batch, a data-dependent step
        lines = [line.strip(" -") for line in str(error).strip().splitlines() if line.strip()][:2]
        raise UnsupportedOpError(f"{label} cannot be traced for export at a dynamic batch: "
                                 f"{type(error).__name__}: {' '.join(lines)}") from error
    lowering.build_tables(program)
    program = program.run_decompositions(lowering.decomposition_table())
    remaining = lowering.remaining_fastad_ops(program)
    if remaining:
        raise UnsupportedOpError(f"{label}: its graph holds {remaining[0]}, which has no "
                                 f"ONNX lowering (see fastad.deploy.lowering)")
    return program


def _settings_line(model: AnomalyModel) -> str:
    """The model's scoring settings that decide its graph, as `key=value` text."""
    keys = [key for key in ("inference", "stride", "image_score") if key in model.config]
    return ", ".join(f"{key}={model.config[key]!r}" for key in keys)


def write_onnx(module: DeployModule, images: torch.Tensor, path: Path, input_dtype: str) -> Path:
    """The ONNX file of `module` (opset OPSET, dynamic batch) at `path`."""
    example = (images[:2] * 255).round().to(torch.uint8) if input_dtype == "uint8" else images[:2]
    program = exported_program(module, example, f"{module.model.name} ({_settings_line(module.model)})")
    names = ["image_scores", "maps"] + ([] if module.threshold is None else ["verdict"])
    return save_onnx(program, path, ["images"], names)


def save_onnx(program, path: Path, input_names: list[str], output_names: list[str]) -> Path:
    """An exported program (fastad ops lowered) as an ONNX file at opset OPSET.

    The onnxscript graph optimizer stays off: it rewrites `x + 1e-8` to `x` (partial_conv's
    coverage epsilon), turning 0 / (0 + eps) * 0 into NaN. ONNX Runtime and OpenVINO fold and
    fuse the graph themselves when they load it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, input_names=input_names,
                                         output_names=output_names, optimize=False, verbose=False)
    onnx_program.save(str(path))
    return path


def write_openvino(onnx_path: Path, path: Path, precision: str) -> Path:
    """The OpenVINO IR (model.xml + model.bin) of an ONNX file; fp16 stores the weights in float16."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=precision == "fp16")
    return path


def artefact_metadata(model: AnomalyModel, header: dict, source: str, format: str, precision: str,
                      input_dtype: str, threshold: float | None) -> dict:
    """What metadata.json holds: everything a line system needs besides the graph file."""
    size = model.image_size
    outputs = {"image_scores": "[B] float32", "maps": f"[B, {size}, {size}] float32"}
    if threshold is not None:
        outputs["verdict"] = "[B] bool, image_scores > threshold (true: defect)"
    scale = "uint8 0..255, divided by 255 inside the graph" if input_dtype == "uint8" else "float32 in [0, 1]"
    return {"fastad": fastad.__version__, "format": format, "file": FORMATS[format], "opset": OPSET,
            "precision": precision, "model": model.name, "config": model.config, "checkpoint": source,
            "input": {"name": "images", "shape": ["B", 3, size, size], "dtype": input_dtype, "channels": "RGB",
                      "normalisation": scale, "image_size": size,
                      "resize": "other sizes: bilinear with antialias to image_size before the graph"},
            "outputs": outputs, "image_score": model.config.get("image_score"), "threshold": threshold,
            "calibration": header.get("calibration")}


def _checked_deviation(folder: Path, metadata: dict, model: AnomalyModel, images: torch.Tensor,
                       threshold: float | None, data: str) -> dict:
    inferencer = Inferencer(folder, metadata=metadata)
    got = inferencer.score(images if metadata["input"]["dtype"] == "float32" else (images * 255).round().byte())
    reference_images = images if metadata["input"]["dtype"] == "float32" else (images * 255).round() / 255
    with torch.inference_mode():
        expected = model.score(reference_images)
    deviation = {"images": len(images), "data": data, "runtime": inferencer.runtime,
                 "image_scores": relative_deviation(got.image_scores, expected.image_scores),
                 "maps": relative_deviation(got.maps, expected.maps)}
    if threshold is not None:
        deviation["verdicts_equal"] = bool(torch.equal(expected.image_scores > threshold,
                                                       got.image_scores > threshold))
    if metadata["precision"] == "fp32" and max(deviation["image_scores"], deviation["maps"]) > FP32_TOLERANCE:
        raise UnsupportedOpError(f"the exported {model.name} graph deviates from PyTorch by {deviation['maps']:.3g} "
                                 f"(maps) / {deviation['image_scores']:.3g} (image scores), above {FP32_TOLERANCE}")
    return deviation


def relative_deviation(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| (0 when both are all zero)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    diff = float((got.double() - expected.double()).abs().max()) if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _publish(staging: Path, out: Path, metadata: dict) -> None:
    """Moves the checked graph files into `out`, then writes metadata.json (the artefact's
    last file: a folder with it is complete). Files another format left there are removed."""
    out.mkdir(parents=True, exist_ok=True)
    stale = out / METADATA_FILE
    if stale.exists():
        stale.unlink()
    for name in ("model.onnx", "model.xml", "model.bin"):
        if (out / name).exists() and not (staging / name).exists():
            (out / name).unlink()
    for path in staging.iterdir():
        os.replace(path, out / path.name)
    write_json(metadata, out / METADATA_FILE)
