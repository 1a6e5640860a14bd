"""Run anomalib's own PatchCore and PaDiM on fastad's kernels, with no other change to user code.

    import fastad.integrations.anomalib as fastad_anomalib
    fastad_anomalib.enable()                  # or: with fastad_anomalib.enabled(): ...

enable() replaces, in the installed anomalib (SUPPORTED_SERIES), exactly these:

- KCenterGreedy.select_coreset_idxs: anomalib's sparse random projection and its random start
  draw (torch.randint on the features' device) run unchanged, so the random streams stay
  anomalib's; the greedy loop is fastad.ops.kcenter_coreset (Euclidean distance, running
  minimum, first index on ties, a chosen row is never chosen again).
- PatchcoreModel.nearest_neighbors, for every n_neighbors: fastad.ops.knn, which never holds
  the query x bank distance matrix. Same return contract: ([N], [N]) for n_neighbors == 1,
  ([N, k], [N, k]) ascending otherwise, in the query's dtype.
- PatchcoreModel.compute_anomaly_score: the paper's re-weighting, with the distances from each
  image's most anomalous patch to its k support rows computed directly ([B, k, D]) instead of by
  euclidean_dist's |x|² − 2x·y + |y|² expansion.
- the `blur` of PatchCore's and PaDiM's AnomalyMapGenerator (a class-level property, so models
  built before enable() are covered too): the GaussianBlur2d's 2-D convolution becomes
  fastad.ops.gaussian_blur (separable, same reflect padding); sigma is read back from the
  module's kernel, which must be a normalised Gaussian of odd size with "same"/"reflect" padding.

Float16/bfloat16 inputs are computed in float32 and cast back. Where a kernel cannot run (a device
other than CPU/CUDA, float64 on CUDA, k > fastad's CUDA limit, a blur configured otherwise) the
original anomalib code runs and an AnomalibFallbackWarning names why. NaN/Inf in a memory bank or
query is refused with a ValueError (fastad.ops.knn), where anomalib would return NaN scores.

disable() puts back the very objects enable() replaced (identity, not copies). datamodule() feeds
any fastad dataset spec (e.g. the offline "builtin:brick") to anomalib's Engine.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import threading
import warnings
import weakref
from pathlib import Path

import torch
from torch.nn import functional as F

import fastad.ops
from fastad.ops.knn import CUDA_MAX_K

SUPPORTED_SERIES = (2, 7)  # anomalib major.minor whose functions these replacements reproduce
REQUIREMENT = f"anomalib>={SUPPORTED_SERIES[0]}.{SUPPORTED_SERIES[1]}.0,<{SUPPORTED_SERIES[0]}.{SUPPORTED_SERIES[1] + 1}"

_PATCHCORE = "anomalib.models.image.patchcore"
_PADIM = "anomalib.models.image.padim"
_MISSING = object()
_lock = threading.Lock()
_originals: dict[tuple[type, str], object] = {}  # (owner, name) -> what enable() replaced
_blur_sigmas: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # GaussianBlur2d -> (sigma, size) or reason


class AnomalibFallbackWarning(UserWarning):
    """A replaced anomalib function ran its original code because fastad's kernel cannot run there."""


def check_version() -> str:
    """Returns the installed anomalib version; ImportError (not installed) or RuntimeError (a
    version outside SUPPORTED_SERIES) with the requirement to install."""
    try:
        version = importlib.metadata.version("anomalib")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"fastad.integrations.anomalib needs anomalib: pip install 'fastad[anomalib]' "
                          f"({REQUIREMENT})") from None
    parts = version.split(".")
    series = tuple(int(p) for p in parts[:2] if p.isdigit())
    if series != SUPPORTED_SERIES:
        raise RuntimeError(f"fastad.integrations.anomalib supports {REQUIREMENT}, found anomalib {version}; "
                           f"install a supported version (pip install 'fastad[anomalib]')")
    return version


def _targets() -> list[tuple[type, str, object]]:
    """(owner class, attribute, replacement) for every function enable() swaps."""
    k_center_greedy = importlib.import_module("anomalib.models.components.sampling.k_center_greedy")
    patchcore = importlib.import_module(f"{_PATCHCORE}.torch_model")
    patchcore_map = importlib.import_module(f"{_PATCHCORE}.anomaly_map")
    padim_map = importlib.import_module(f"{_PADIM}.anomaly_map")
    blur = property(_fast_blur, _set_blur, doc="the GaussianBlur2d, run by fastad.ops.gaussian_blur")
    return [
        (k_center_greedy.KCenterGreedy, "select_coreset_idxs", _select_coreset_idxs),
        (patchcore.PatchcoreModel, "nearest_neighbors", _nearest_neighbors),
        (patchcore.PatchcoreModel, "compute_anomaly_score", _compute_anomaly_score),
        (patchcore_map.AnomalyMapGenerator, "blur", blur),
        (padim_map.AnomalyMapGenerator, "blur", blur),
    ]


def enable() -> None:
    """Swap anomalib's PatchCore/PaDiM hot loops for fastad's kernels (see the module docstring).
    Idempotent. Raises ImportError/RuntimeError when anomalib is missing or unsupported."""
    check_version()
    with _lock:
        if _originals:
            return
        for owner, name, replacement in _targets():
            _originals[(owner, name)] = owner.__dict__.get(name, _MISSING)
            setattr(owner, name, replacement)


def disable() -> None:
    """Put back exactly what enable() replaced. A no-op when not enabled."""
    with _lock:
        for (owner, name), original in _originals.items():
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        _originals.clear()


def is_enabled() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def enabled():
    """`with enabled():` runs the block with enable() in force and leaves the state as it found it."""
    was_enabled = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was_enabled:
            disable()


def datamodule(spec: str, root, size=256, seed: int = 0, **kwargs):
    """anomalib's MVTecAD datamodule over any fastad dataset spec (e.g. "builtin:brick"): the
    dataset is written to root/<name> in the MVTec layout by fastad.data.export_mvtec (which
    refuses a non-empty root/<name>); kwargs go to anomalib.data.MVTecAD."""
    from anomalib.data import MVTecAD

    from fastad.data import export_mvtec

    exported = export_mvtec(spec, root, size=size, seed=seed)
    return MVTecAD(root=root, category=Path(exported["path"]).name, **kwargs)


def _original(owner: type, name: str):
    original = _originals.get((owner, name), _MISSING)
    if original is _MISSING:  # called after disable() through a reference kept from before
        return getattr(owner, name)
    return original


def _fallback(reason: str) -> None:
    warnings.warn(f"fastad.integrations.anomalib: {reason}; running anomalib's original code",
                  AnomalibFallbackWarning, stacklevel=3)


def _unsupported(tensor: torch.Tensor) -> str | None:
    """Why fastad's kernels cannot take this tensor (after a half -> float32 cast), or None."""
    if tensor.device.type not in ("cpu", "cuda"):
        return f"fastad has no kernels for device {tensor.device.type}"
    if tensor.is_cuda and tensor.dtype == torch.float64:
        return "fastad's CUDA kernels take float32, got float64"
    if not tensor.is_floating_point():
        return f"expected a floating-point tensor, got {tensor.dtype}"
    return None


def _as_kernel_dtype(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


# --- KCenterGreedy.select_coreset_idxs ---------------------------------------------------------

def _select_coreset_idxs(self) -> list[int]:
    """anomalib's select_coreset_idxs with fastad.ops.kcenter_coreset as the greedy loop."""
    reason = _unsupported(self.embedding)
    if reason is not None:
        _fallback(reason)
        return _original(type(self), "select_coreset_idxs")(self)
    if self.embedding.ndim == 2:
        self.model.fit(self.embedding)
        self.features = self.model.transform(self.embedding)
    else:
        self.features = self.embedding.reshape(self.embedding.shape[0], -1)
    self.reset_distances()
    start = torch.randint(high=self.n_observations, size=(1,), device=self.features.device)
    picks = fastad.ops.kcenter_coreset(_as_kernel_dtype(self.features), self.coreset_size, int(start))
    return picks.cpu().tolist()


# --- PatchcoreModel.nearest_neighbors and compute_anomaly_score -------------------------------

def _nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """anomalib's contract ([N] each for n_neighbors == 1, else [N, k] ascending) by fastad.ops.knn."""
    reason = _unsupported(embedding) or _unsupported(self.memory_bank)
    if reason is None and embedding.is_cuda and n_neighbors > CUDA_MAX_K:
        reason = f"fastad's CUDA knn takes k <= {CUDA_MAX_K}, got n_neighbors = {n_neighbors}"
    if reason is not None:
        _fallback(reason)
        return _original(type(self), "nearest_neighbors")(self, embedding, n_neighbors)
    dist, index = fastad.ops.knn(_as_kernel_dtype(embedding), _as_kernel_dtype(self.memory_bank), n_neighbors)
    dist = dist.to(embedding.dtype)
    if n_neighbors == 1:
        return dist.squeeze(1), index.squeeze(1)
    return dist, index


def _compute_anomaly_score(self, patch_scores: torch.Tensor, locations: torch.Tensor,
                           embedding: torch.Tensor) -> torch.Tensor:
    """Image scores [B] from patch_scores [B, P], their nearest bank rows locations [B, P] and the
    embedding [B * P, D]: the max patch score, re-weighted by 1 − softmax over the distances to
    the k bank rows nearest that patch's nearest row (PatchCore eq. 7) when num_neighbors > 1."""
    if self.num_neighbors == 1:
        return patch_scores.amax(1)
    batch_size, num_patches = patch_scores.shape
    rows = torch.arange(batch_size, device=patch_scores.device)
    max_patches = torch.argmax(patch_scores, dim=1)
    max_features = embedding.reshape(batch_size, num_patches, -1)[rows, max_patches]
    score = patch_scores[rows, max_patches]
    nn_sample = self.memory_bank[locations[rows, max_patches]]
    k = min(self.num_neighbors, self.memory_bank.shape[0])
    _, support = self.nearest_neighbors(nn_sample, n_neighbors=k)
    support_rows = self.memory_bank[support.reshape(batch_size, k)]  # [B, k, D]
    distances = torch.linalg.vector_norm(max_features.unsqueeze(1) - support_rows, dim=-1)
    weights = (1 - F.softmax(distances, 1))[..., 0]
    return weights * score


# --- AnomalyMapGenerator.blur --------------------------------------------------------------------

class _SeparableBlur:
    """Stands in for a GaussianBlur2d: calling it gives the same map by fastad.ops.gaussian_blur;
    every other attribute is the module's."""

    def __init__(self, module: torch.nn.Module, sigma: float, kernel_size: int) -> None:
        self.module, self.sigma, self.kernel_size = module, sigma, kernel_size

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        reason = _unsupported(maps)
        if reason is None and maps.ndim == 4 and maps.shape[1] != self.module.channels:
            reason = f"maps have {maps.shape[1]} channels, the blur was built for {self.module.channels}"
        if reason is None and (maps.ndim != 4 or self.kernel_size // 2 >= min(maps.shape[-2:])):
            reason = f"maps of shape {tuple(maps.shape)} are not [B, C, H, W] wider than the kernel's radius"
        if reason is not None:
            _fallback(reason)
            return self.module(maps)
        return fastad.ops.gaussian_blur(_as_kernel_dtype(maps), self.sigma, self.kernel_size).to(maps.dtype)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def gaussian_sigma(module: torch.nn.Module) -> tuple[float, int] | str:
    """(sigma, kernel_size) of an anomalib GaussianBlur2d whose kernel is a normalised square
    Gaussian of odd size with "same" reflect padding, read back from its kernel and checked
    against it (max difference <= 1e-6 of the largest tap, 4 ulps for a float16 kernel); otherwise
    the reason it is not."""
    kernel = getattr(module, "kernel", None)
    if getattr(module, "padding", None) != "same" or getattr(module, "border_type", None) != "reflect":
        return "the blur is not configured with padding='same', border_type='reflect'"
    if not isinstance(kernel, torch.Tensor) or kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2] \
            or kernel.shape[-1] % 2 == 0 or kernel.shape[-1] < 3:
        return "the blur's kernel is not a square kernel of odd size >= 3"
    size, radius = kernel.shape[-1], kernel.shape[-1] // 2
    plane = kernel[0, 0].detach().double().cpu()
    centre_row = plane[radius] / plane[radius, radius]
    reach = int((centre_row[radius:] > 1e-30).nonzero().max())  # the farthest tap that has not underflowed
    if reach == 0 or not bool(torch.isfinite(centre_row).all()):
        return "the blur's kernel has no Gaussian falloff to read sigma from"
    sigma = float((-(reach ** 2) / (2 * torch.log(centre_row[radius + reach]))).sqrt())
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float64).square() / (2 * sigma * sigma))
    expected = torch.outer(taps, taps)
    expected /= expected.sum()
    tolerance = max(1e-6, 4 * torch.finfo(kernel.dtype).eps) * expected.max()  # a float16 model's kernel
    if not bool((kernel.detach().double().cpu() - expected).abs().max() <= tolerance):
        return "the blur's kernel is not a normalised Gaussian"
    return sigma, size


def _fast_blur(generator):
    module = torch.nn.Module.__getattr__(generator, "blur")  # the registered submodule
    found = _blur_sigmas.get(module)
    if found is None:
        found = _blur_sigmas[module] = gaussian_sigma(module)
    if isinstance(found, str):
        _fallback(found)
        return module
    return _SeparableBlur(module, *found)


def _set_blur(generator, module) -> None:
    generator.register_module("blur", module)  # reached for None; nn.Module.__setattr__ stores modules itself
