"""Checkpoints: one safetensors file (weights, optimizer and RNG state, JSON header) per run folder.

    runs/NAME/checkpoint.safetensors   model.<param>, optimizer.<i>.<name>, generator; header in
                                       the file's metadata (model name and config, data spec,
                                       training position)
    runs/NAME/config.json              the same header, for people

Both are written to a temporary file and renamed into place, so a crash mid-save leaves the
previous checkpoint intact. Loading never executes code from the file: safetensors holds only
tensors and the header is JSON.

The file proves itself (format 2): the header records a sha256 digest of every tensor (name,
dtype, shape, bytes; "tensor_digests") and of itself ("header_digest", over the rest of the
header as sorted JSON), and loading checks them, so one flipped bit anywhere is refused naming
the file and the tensor. A format-1 checkpoint (written before digests) loads with a warning
that it carries no digest.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from fastad.files import atomic_write, write_json
from fastad.models.base import AnomalyModel
from fastad.models.registry import create_model

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 2
TENSOR_DIGESTS, HEADER_DIGEST = "tensor_digests", "header_digest"
FOR_PEOPLE_ONLY = ("optimizer", TENSOR_DIGESTS, HEADER_DIGEST)  # header keys config.json leaves out
LEGACY_IMAGE_SCORE = "max"  # the image-score rule of checkpoints whose config has no image_score key


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on the requested device), its header, the
    training state tensors (optimizer.*, generator) for resuming, and whether its digests were
    checked (False: a format-1 file, which carries none)."""

    model: AnomalyModel
    header: dict
    training_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    verified: bool = True


def checkpoint_path(run) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(run)
    return path / CHECKPOINT_FILE if path.is_dir() or not path.suffix else path


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Loads the state saved by save_checkpoint(optimizer=...) into a freshly built optimizer."""
    saved = header["optimizer"]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in saved["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_checkpoint(run_dir, model: AnomalyModel, header: dict, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, generator: torch.Generator | None = None) -> Path:
    """Writes run_dir/checkpoint.safetensors and run_dir/config.json atomically.

    Args:
        header: JSON-serialisable facts to keep (data spec, training position, ...); the model's
            name and config are added.
        optimizer, scheduler, generator: training state to resume from (optional).

    Returns:
        the checkpoint file's path.
    """
    tensors = {f"model.{name}": value.detach().cpu().clone().contiguous() for name, value in model.state_dict().items()}
    header = {"format": FORMAT_VERSION, "model": model.name, "config": model.config, **header}
    if optimizer is not None:
        optimizer_tensors, header["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update({k: v.detach().cpu().clone().contiguous() for k, v in optimizer_tensors.items()})
    if scheduler is not None:
        header["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if _is_json(v)}
    if generator is not None:
        tensors["generator"] = generator.get_state()
    return _write(checkpoint_path(run_dir), tensors, header)


def tensor_digest(name: str, value: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's name, dtype, shape and bytes (OpenSSL: SHA-NI where the CPU has it)."""
    digest = hashlib.sha256(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def header_digest(header: dict) -> str:
    """sha256 (hex) of a header, its own digest left out, as sorted compact JSON."""
    rest = {k: v for k, v in header.items() if k != HEADER_DIGEST}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write(path: Path, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """The checkpoint file (its header with the digests of every tensor and of itself) and
    config.json beside it, each written atomically."""
    header = {**header, "format": FORMAT_VERSION,
              TENSOR_DIGESTS: {name: tensor_digest(name, value) for name, value in tensors.items()}}
    header[HEADER_DIGEST] = header_digest(header)
    data = save_tensors(tensors, metadata={"fastad": json.dumps(header)})
    with atomic_write(path) as f:
        f.write(data)
    write_json({k: v for k, v in header.items() if k not in FOR_PEOPLE_ONLY}, path.parent / CONFIG_FILE)
    return path


def verify_digests(path: Path, header: dict, tensors: dict[str, torch.Tensor] | None) -> bool:
    """Checks the header's digests (and, given `tensors`, every tensor's): True when they hold,
    False (with a warning) for a format-1 checkpoint, which carries none; ValueError naming the
    file and the tensor (or the header) that does not match."""
    if HEADER_DIGEST not in header:
        if TENSOR_DIGESTS in header or not isinstance(header.get("format", 1), int) or header.get("format", 1) >= 2:
            raise ValueError(f"checkpoint {path}: its header lacks its digest (the file is corrupt)")
        warnings.warn(f"checkpoint {path} carries no digest (written before fastad recorded them): a corruption "
                      "of its tensors cannot be detected", UserWarning, stacklevel=3)
        return False
    recorded = header.get(TENSOR_DIGESTS)
    if header[HEADER_DIGEST] != header_digest(header) or not isinstance(recorded, dict):
        raise ValueError(f"checkpoint {path}: its header does not match its digest (the file is corrupt)")
    for name in sorted(set(recorded) | set(tensors or {})) if tensors is not None else ():
        if name not in tensors or name not in recorded or recorded[name] != tensor_digest(name, tensors[name]):
            raise ValueError(f"checkpoint {path}: tensor {name} does not match its digest (the file is corrupt)")
    return True


def update_header(run, changes: dict) -> Path:
    """Rewrites run's checkpoint with its header updated by `changes` (JSON values), every tensor
    kept, through the same atomic save (the previous file stays intact until the rename). The
    caller holds the run folder's lock. Raises as load_checkpoint for a missing or corrupt file."""
    path = _existing_checkpoint(run)
    header, tensors = _read(path, tensors=True)
    verify_digests(path, header, tensors)
    return _write(path, tensors, {**header, **changes})


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both floating point (a model may be kept in bfloat16 or float64), or the same dtype."""
    return a.dtype == b.dtype or (a.is_floating_point() and b.is_floating_point())


def _data_sized(built: torch.Tensor, saved: torch.Tensor) -> bool:
    """A buffer built empty (a memory bank before it is filled) takes the saved shape when it keeps
    its kind of dtype and number of dimensions, and every dimension the fresh buffer leaves at 0 or 1 (a
    placeholder) is the only kind that changes: bank [0, D] -> [M, D], images [0, 3, 1, 1] ->
    [N, 3, H, W]."""
    return (built.numel() == 0 and same_kind(built, saved) and built.dim() == saved.dim()
            and all(b == s or b in (0, 1) for b, s in zip(built.shape, saved.shape)))


def _resize_buffers(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Buffers whose size depends on the data (memory banks) take the saved shape."""
    for name, buffer in list(model.named_buffers()):
        saved = state.get(name)
        if saved is not None and buffer is not None and buffer.shape != saved.shape and _data_sized(buffer, saved):
            module_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module_name), leaf, torch.empty_like(saved, device=buffer.device))


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Every tensor of `state` against model.state_dict(): the same names, each tensor's shape
    (data-sized buffers excepted, see _data_sized) and dtype (any floating dtype for a floating
    tensor, the same dtype otherwise); ValueError naming `source` (e.g. "checkpoint <path>") and
    the tensor otherwise."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"lacks model.{missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")]
                 if missing else []) + ([f"has unexpected model.{unexpected[0]}"] if unexpected else [])
        raise ValueError(f"{source} does not match its {getattr(model, 'name', 'model')} config: "
                         f"it {' and '.join(parts)}")
    for name, want in expected.items():
        got = state[name]
        if not same_kind(got, want) or (got.shape != want.shape and not _data_sized(want, got)):
            raise ValueError(f"{source}: tensor model.{name} is {got.dtype} {tuple(got.shape)}, the "
                             f"model built from its config expects {want.dtype} {tuple(want.shape)}")


def _existing_checkpoint(run) -> Path:
    path = checkpoint_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint must be a run folder holding {CHECKPOINT_FILE} (or the file), "
                                f"found nothing at {path}")
    return path


def _parse_header(path: Path, metadata: dict | None) -> dict:
    """The checkpoint's JSON header, checked: a dict with a str 'model' and a dict 'config'."""
    if not metadata or "fastad" not in metadata:
        raise ValueError(f"{path} is not a fastad checkpoint (its header has no 'fastad' entry)")
    try:
        header = json.loads(metadata["fastad"])
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {path}: its header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"checkpoint {path}: its header must be a JSON object, got {type(header).__name__}")
    if not isinstance(header.get("model"), str):
        raise ValueError(f"checkpoint {path}: its header must name the model (key 'model', a string), "
                         f"got {header.get('model')!r}")
    if not isinstance(header.get("config", {}), dict):
        raise ValueError(f"checkpoint {path}: its header's 'config' must be a JSON object, "
                         f"got {type(header['config']).__name__}")
    return header


def _read(path: Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors or {}) of a checkpoint file; ValueError naming the file when it is corrupt."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            values = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001  SafetensorError, OSError, ...: the file is corrupt
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file ({type(error).__name__}: "
                         f"{error})") from None
    return _parse_header(path, metadata), values


def read_header(run) -> dict:
    """The JSON header of a run's checkpoint (model, config, data, training position) without
    reading its tensors; ValueError naming the file when the header does not match its digest."""
    path = _existing_checkpoint(run)
    header = _read(path, tensors=False)[0]
    if HEADER_DIGEST in header:
        verify_digests(path, header, None)
    return header


def load_checkpoint(run, device="cpu") -> Checkpoint:
    """A run folder (or checkpoint file) -> Checkpoint with the model rebuilt from its registry
    name and config, weights loaded, on `device`, in eval mode.

    Raises FileNotFoundError (no checkpoint there) or ValueError naming the file and what is
    wrong: a corrupt file, a header without a model name, a model name not in the registry, a
    config the model rejects (the model's message names the key), a tensor missing, unexpected
    or of another shape or dtype than the model built from the config has, or a tensor (or the
    header) that does not match its digest. A format-1 file (no digests) loads with a warning
    and verified=False."""
    path = _existing_checkpoint(run)
    header, tensors = _read(path, tensors=True)
    state = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    model = model_from_state(header["model"], header.get("config", {}), state, f"checkpoint {path}")
    verified = verify_digests(path, header, tensors)
    model = model.to(device).eval()
    return Checkpoint(model, header, {k: v for k, v in tensors.items() if not k.startswith("model.")}, verified)


def build_model(name: str, config: dict, source: str = "the saved model") -> AnomalyModel:
    """The registry model `name` built with `config` for a saved state (no weights file read);
    ValueError naming `source` when the name is unknown or the model rejects the config. A config
    saved before the `image_score` key existed scores images by the map's maximum, as it did."""
    from fastad.models.registry import MODELS

    import fastad.models  # noqa: F401  (registers every model)

    if name not in MODELS:
        raise ValueError(f"{source}: model must be one of {', '.join(sorted(MODELS))}; got {name!r}")
    config = {"image_score": LEGACY_IMAGE_SCORE, **config}
    try:
        return create_model(name, read_weight_files=False, **config)
    except (TypeError, ValueError, ArithmeticError) as error:
        raise ValueError(f"{source}: its config does not build a {name} model: {error}") from None


def model_from_state(name: str, config: dict, state: dict[str, torch.Tensor],
                     source: str = "the saved model") -> AnomalyModel:
    """The registry model `name` built with `config`, its data-sized buffers resized to `state`'s
    shapes and `state` (a state_dict, checked by check_state) loaded; on the CPU, in training mode.
    No weights file the config names is opened: the state holds those tensors."""
    model = build_model(name, config, source)
    state = model.upgrade_state(state)
    _resize_buffers(model, state)
    check_state(model, state, source)
    model.load_state_dict(state)
    return model
