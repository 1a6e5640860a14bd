"""Scoring a folder (or a list) of images on a Ray cluster with Ray Data.

    from fastad.distributed import score_on_ray
    result = score_on_ray("runs/brick", "/shared/line/today", "/shared/line/today-scores",
                           address="auto", device="cuda", batch_size=32)

The driver checks the inputs, loads the checkpoint once and puts its weights (memory bank
included) into the object store with one ray.put; an actor pool of ScoreReplica UDFs (one per GPU,
or one per `cpus_per_replica` CPUs) rebuilds the model from that object and scores whole batches,
writing out/maps/<name>.npy and out/parts/<name>.json per image. Images that already have a
record are not rescored (resume); out/scores.csv is assembled from the records at the end.
Inputs and `out` must be on storage every node sees (NFS, a shared volume, ...). The output
folder belongs to one run, as the local path's (fastad.engine.run_folder): locked while the run
writes it, and refused when it holds another run's results unless overwrite=True.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastad.distributed.inputs import batches, list_inputs
from fastad.distributed import replica
from fastad.distributed.records import assemble_scores, changed_input, is_finished, record_path
from fastad.distributed.weights import pack_model
from fastad.checks import check_bool, check_choice, check_int
from fastad.engine.checkpoint import checkpoint_path, load_checkpoint
from fastad.engine.run_folder import claim, locked, mark_complete
from fastad.engine.score_run import OWNED, run_manifest
from fastad.engine.scorer import SCORING_PRECISIONS
from fastad.models.base import AnomalyModel

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
    check_choice("device", device, DEVICES)
    check_choice("precision", precision, SCORING_PRECISIONS)
    if device == "cpu" and (precision == "fp16" or check_bool("cuda_graphs", cuda_graphs)):
        raise ValueError("precision 'fp16' and cuda_graphs need device='cuda'")
    check_int("batch_size", batch_size, 1)
    check_int("cpus_per_replica", cpus_per_replica, 1)
    if num_replicas is not None:
        check_int("num_replicas", num_replicas, 1)


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


def score_on_ray(checkpoint, paths_or_folder, out, *, address: str | None = None, num_replicas: int | None = None,
                 batch_size: int = 8, device: str = "cpu", precision: str = "fp32", resume: bool = True,
                 save_maps: bool = True, cuda_graphs: bool = False, cpus_per_replica: int = 1,
                 overwrite: bool = False) -> DistributedScores:
    """Scores images on a Ray cluster; writes what `fastad score` writes (out/scores.csv with
    `path,score` rows in input order, out/maps/<name>.npy [H, W] float32, out/run.json), plus
    out/parts/.

    Args:
        checkpoint: a run folder (or its checkpoint.safetensors) or a trained AnomalyModel.
        paths_or_folder: a folder (every image directly in it, by name) or a list of image paths.
        out: output folder, on storage every node can write.
        address: the cluster to connect to ("auto", "ray://head:10001", "head:6379"); None uses the
            Ray session already initialised in this process, or starts a local one.
        num_replicas: actors in the pool (default: one per GPU, or per cpus_per_replica CPUs).
        batch_size, precision, cuda_graphs: as fastad.Scorer; batches are cut like the local path's.
        device: "cpu" or "cuda" (one GPU per replica).
        resume: skip images whose record (and map) an earlier attempt of this run already wrote;
            False rescores all.
        save_maps: write the per-image maps (False: scores only).
        cpus_per_replica: CPUs each actor reserves (and decodes images with).
        overwrite: replace another run's results in `out` (otherwise FileExistsError).

    Returns:
        DistributedScores (paths and image_scores as in scores.csv, skipped files, counts). Images
        that fail to decode in a replica are reported on stderr and listed in `skipped`.
    """
    _check_arguments(device, batch_size, precision, cuda_graphs, num_replicas, cpus_per_replica)
    check_bool("overwrite", overwrite)
    ray = require_ray()
    model = checkpoint if isinstance(checkpoint, AnomalyModel) else load_checkpoint(checkpoint, "cpu").model
    paths, skipped = list_inputs(paths_or_folder, model.image_size)
    source = (f"a {model.name} model object" if isinstance(checkpoint, AnomalyModel)
              else str(checkpoint_path(checkpoint).resolve()))
    settings = {"engine": "ray", "device": device, "batch_size": batch_size, "precision": precision,
                "cuda_graphs": cuda_graphs, "memory_format": "channels_last", "image_size": model.image_size,
                "maps": "npy" if save_maps else None}
    images = str(Path(paths_or_folder).resolve()) if isinstance(paths_or_folder, (str, Path)) else "a list of paths"
    out = Path(out)
    with locked(out):
        claim(out, run_manifest(source, model, images, paths, settings), overwrite, OWNED)
        if not resume:  # rescore everything (a retried batch still skips what this attempt finished)
            for i, path in enumerate(paths):
                record_path(out, path, i).unlink(missing_ok=True)
        for i, path in enumerate(paths):
            reason = changed_input(out, path, i) if resume else None
            if reason is not None:
                print(f"warning: {path}: {reason}; scoring it again", file=sys.stderr, flush=True)
        unfinished = {i // batch_size for i, path in enumerate(paths) if not is_finished(out, path, i, save_maps)}
        pending = [i for i in range(len(paths)) if i // batch_size in unfinished]  # whole batches, as a fresh run's
        started = time.perf_counter()
        failed = _score_pending(ray, address, model, paths, pending, out, device, batch_size, precision, cuda_graphs,
                                save_maps, num_replicas, cpus_per_replica) if pending else []
        kept, image_scores = assemble_scores(out, paths)
        timing = {"seconds": round(time.perf_counter() - started, 3), "images": len(pending) - len(failed)}
        mark_complete(out, skipped=[{"path": p, "reason": r} for p, r in skipped + failed], timing=timing)
    return DistributedScores(kept, image_scores, skipped + failed, scored=len(pending) - len(failed),
                             resumed=len(paths) - len(pending))


def _score_pending(ray, address, model, paths, pending, out, *settings) -> list[tuple[str, str]]:
    """Connects to (or starts) Ray, scores the pending input positions; [(path, reason)] of the
    images that failed to decode, each reported on stderr."""
    started = False
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"address {address!r} given but Ray is already initialised in this process; "
                             "pass address=None to use that session")
    else:
        ray.init(address=address)
        started = True
    try:
        failed = _run(ray, model, [paths[i] for i in pending], pending, out, *settings)
    finally:
        if started:
            ray.shutdown()
    for path, reason in failed:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    return failed


def _run(ray, model, paths, indices, out, device, batch_size, precision, cuda_graphs, save_maps, num_replicas,
         cpus_per_replica) -> list[tuple[str, str]]:
    """Runs the actor pool over the pending images; returns [(path, reason)] of those that failed to decode."""
    packed_ref = ray.put(pack_model(model))  # once: every actor (and every restart) fetches this object
    rows = batches(indices, paths, batch_size)
    size = min(_replicas(ray, device, num_replicas, cpus_per_replica), len(rows))
    # a few blocks per replica: tasks stay balanced, and a retried task redoes few batches
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), BLOCKS_PER_REPLICA * size))
    scored = dataset.map_batches(
        replica.ScoreReplica,
        batch_size=1,  # one row = one scoring batch of up to batch_size images
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"packed_ref": [packed_ref], "device": device, "batch_size": batch_size,
                               "precision": precision, "cuda_graphs": cuda_graphs, "out": str(out),
                               "save_maps": save_maps, "decode_threads": cpus_per_replica},
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
