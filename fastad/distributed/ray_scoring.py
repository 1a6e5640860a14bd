"""Scoring a folder (or a list) of images on a Ray cluster with Ray Data.

    from fastad.distributed import score_dataset
    result = score_dataset("runs/brick", "/shared/line/today", "/shared/line/today-scores",
                           address="auto", device="cuda", batch_size=32)

The driver checks the inputs, loads the checkpoint once and puts its weights (memory bank
included) into the object store with one ray.put; an actor pool of ScoreReplica UDFs (one per GPU,
or one per `cpus_per_replica` CPUs) rebuilds the model from that object and scores whole batches,
writing out/maps/<name>.npy and out/parts/<name>.json per image. Images that already have a
record are not rescored (resume); out/scores.csv is assembled from the records at the end.
Inputs and `out` must be on storage every node sees (NFS, a shared volume, ...).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastad.distributed.inputs import batches, list_inputs
from fastad.distributed.records import assemble_scores, is_finished, record_path
from fastad.distributed.replica import ScoreReplica
from fastad.distributed.weights import pack_model
from fastad.engine.checkpoint import load_checkpoint
from fastad.engine.scorer import PRECISIONS
from fastad.models.base import AnomalyModel

CRASH_ENV = "FASTAD_RAY_TEST_CRASH"  # tests only: "N:/marker/file", see ScoreReplica(crash_once=...)
DEVICES = ("cpu", "cuda")
BLOCKS_PER_REPLICA = 16


@dataclass
class DistributedScores:
    """What a distributed run wrote: paths and image_scores [N] float32 as in out/scores.csv, the
    files skipped as unreadable [(path, reason)], and how many images this run scored versus
    found finished by an earlier run (resumed)."""

    paths: list[str]
    image_scores: torch.Tensor
    skipped: list = field(default_factory=list)
    scored: int = 0
    resumed: int = 0


def require_ray():
    """The ray module, or an ImportError that says how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError("fastad.distributed needs Ray Data: pip install 'fastad[ray]' "
                          f"(or pip install 'ray[data]>=2.9'); import failed with: {error}") from None
    return ray


def _check_arguments(device, batch_size, precision, cuda_graphs, num_replicas, cpus_per_replica) -> None:
    """Fails on the driver what fastad.Scorer would fail in every replica."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (each GPU replica gets its own GPU), got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if device == "cpu" and (precision == "fp16" or cuda_graphs):
        raise ValueError("precision 'fp16' and cuda_graphs need device='cuda'")
    for name, value in (("batch_size", batch_size), ("cpus_per_replica", cpus_per_replica)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if num_replicas is not None and (isinstance(num_replicas, bool) or not isinstance(num_replicas, int)
                                     or num_replicas < 1):
        raise ValueError(f"num_replicas must be None or an int >= 1, got {num_replicas!r}")


def _replicas(ray, device: str, num_replicas: int | None, cpus_per_replica: int) -> int:
    """num_replicas, or by default one per GPU (device "cuda") or per cpus_per_replica CPUs of the cluster."""
    if num_replicas is not None:
        return num_replicas
    resources = ray.cluster_resources()
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ValueError("device 'cuda' but the Ray cluster has no GPUs; use device='cpu'")
        return gpus
    return max(1, int(resources.get("CPU", 1)) // cpus_per_replica)


def _crash_hook() -> tuple[int, str] | None:
    value = os.environ.get(CRASH_ENV)
    if not value:
        return None
    calls, _, marker = value.partition(":")
    return int(calls), marker


def score_dataset(checkpoint, paths_or_folder, out, *, address: str | None = None, num_replicas: int | None = None,
                  batch_size: int = 8, device: str = "cpu", precision: str = "fp32", resume: bool = True,
                  save_maps: bool = True, cuda_graphs: bool = False, cpus_per_replica: int = 1) -> DistributedScores:
    """Scores images on a Ray cluster; writes what `fastad score` writes (out/scores.csv with
    `path,score` rows in input order, out/maps/<name>.npy [H, W] float32), plus out/parts/.

    Args:
        checkpoint: a run folder (or its checkpoint.safetensors) or a trained AnomalyModel.
        paths_or_folder: a folder (every image directly in it, by name) or a list of image paths.
        out: output folder, on storage every node can write.
        address: the cluster to connect to ("auto", "ray://head:10001", "head:6379"); None uses the
            Ray session already initialised in this process, or starts a local one.
        num_replicas: actors in the pool (default: one per GPU, or per cpus_per_replica CPUs).
        batch_size, precision, cuda_graphs: as fastad.Scorer; batches are cut like the local path's.
        device: "cpu" or "cuda" (one GPU per replica).
        resume: skip images whose record (and map) an earlier run already wrote; False rescores all.
        save_maps: write the per-image maps (False: scores only).
        cpus_per_replica: CPUs each actor reserves (and decodes images with).

    Returns:
        DistributedScores (paths and image_scores as in scores.csv, skipped files, counts).
    """
    _check_arguments(device, batch_size, precision, cuda_graphs, num_replicas, cpus_per_replica)
    ray = require_ray()
    if isinstance(checkpoint, AnomalyModel):
        model = checkpoint
    else:
        model = load_checkpoint(checkpoint, "cpu").model
    paths, skipped = list_inputs(paths_or_folder, model.image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh run: forget earlier records (a retried batch still skips what this run finished)
        for i, path in enumerate(paths):
            record_path(out, path, i).unlink(missing_ok=True)
    pending = [i for i, path in enumerate(paths) if not is_finished(out, path, i, save_maps)]

    started = False
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"address {address!r} given but Ray is already initialised in this process; "
                             "pass address=None to use that session")
    else:
        ray.init(address=address)
        started = True
    failed = []
    try:
        if pending:
            failed = _run(ray, model, [paths[i] for i in pending], pending, out, device, batch_size, precision,
                          cuda_graphs, save_maps, num_replicas, cpus_per_replica)
            for path, reason in failed:
                print(f"warning: skipping {path}: {reason}", file=sys.stderr)
            skipped += failed
    finally:
        if started:
            ray.shutdown()
    kept, image_scores = assemble_scores(out, paths)
    return DistributedScores(kept, image_scores, skipped, scored=len(pending) - len(failed),
                             resumed=len(paths) - len(pending))


def _run(ray, model, paths, indices, out, device, batch_size, precision, cuda_graphs, save_maps, num_replicas,
         cpus_per_replica) -> list[tuple[str, str]]:
    """Runs the actor pool over the pending images; returns [(path, reason)] of those that failed to decode."""
    packed_ref = ray.put(pack_model(model))  # once: every actor (and every restart) fetches this object
    rows = batches(indices, paths, batch_size)
    size = min(_replicas(ray, device, num_replicas, cpus_per_replica), len(rows))
    # a few blocks per replica: tasks stay balanced, and a retried task redoes few batches
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), BLOCKS_PER_REPLICA * size))
    scored = dataset.map_batches(
        ScoreReplica,
        batch_size=1,  # one row = one scoring batch of up to batch_size images
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"packed_ref": [packed_ref], "device": device, "batch_size": batch_size,
                               "precision": precision, "cuda_graphs": cuda_graphs, "out": str(out),
                               "save_maps": save_maps, "decode_threads": cpus_per_replica,
                               "crash_once": _crash_hook()},
        num_cpus=cpus_per_replica,
        num_gpus=1 if device == "cuda" else 0,
        # A replica that dies (node lost, OOM kill) is restarted and its unfinished batches are
        # retried on it: Ray Data's actor pools default to max_restarts=-1, max_task_retries=-1
        # (Ray 2.60 does; passing them as raw remote args is deprecated there, so they are not
        # restated; tests/test_distributed.py kills a replica to check it).
    )
    failed = []
    for row in scored.iter_rows():
        if row["error"]:
            failed.append((str(row["path"]), str(row["error"])))
    return failed
