"""Scoring a folder (or a list) of images on a Ray cluster with Ray Data.

    from fastad.distributed import score_on_ray
    result = score_on_ray("runs/brick", "/mnt/line/today", "/mnt/line/today-scores",
                           address="auto", device="cuda", batch_size=32)

The driver checks the arguments and inputs as fastad.Scorer and the local engine do, loads the
checkpoint once and puts its weights (memory bank included) into the object store with one
ray.put; an actor pool of ScoreReplica UDFs (one per GPU, or one per `cpus_per_replica` CPUs)
rebuilds the model from that object, scores whole batches and writes out/maps/<name>.npy per
image; the driver appends each batch's rows to out/scores.csv and out/inputs.csv in input order
as they come back. The folder is the local engine's (fastad.engine.scores_folder: same files,
same bytes, same resume) and belongs to one run (fastad.engine.run_folder): locked while the run
writes it, refused when it holds another run's results unless overwrite=True. Inputs and `out`
must be on storage every node sees (NFS, a shared volume, ...).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastad.checks import check_bool, check_choice, check_int
from fastad.distributed import replica
from fastad.distributed.inputs import batches, list_inputs
from fastad.distributed.records import InOrder
from fastad.distributed.weights import pack_model
from fastad.engine.decision import calibrated_threshold
from fastad.engine.run_folder import claim, locked, mark_complete
from fastad.engine.scorer import check_scoring_options, open_model, scoring_settings
from fastad.engine.scores_folder import (SCORES_FILE, BatchWriter, discard, owned_entries, read_finished,
                                         resume_point, run_manifest)

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


def _check_arguments(device, batch_size, precision, cuda_graphs, memory_format, num_replicas,
                     cpus_per_replica) -> None:
    """Fails on the driver what fastad.Scorer would fail in every replica, and the pool's own."""
    check_choice("device", device, DEVICES)
    check_scoring_options(device, batch_size, precision, cuda_graphs, memory_format)
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
                 save_maps: bool = True, cuda_graphs: bool = False, memory_format: str = "channels_last",
                 cpus_per_replica: int = 1, overwrite: bool = False) -> DistributedScores:
    """Scores images on a Ray cluster; writes what `fastad score` writes (out/scores.csv with
    `path,score` rows in input order, and `verdict` for a calibrated checkpoint, out/inputs.csv,
    out/maps/<name>.npy [H, W] float32, out/run.json), byte for byte.

    Args:
        checkpoint: a run folder (or its checkpoint.safetensors) or a trained AnomalyModel.
        paths_or_folder: a folder (every image directly in it, by name) or a list of image paths.
        out: output folder, on storage every node can write.
        address: the cluster to connect to ("auto", "ray://head:10001", "head:6379"); None uses the
            Ray session already initialised in this process, or starts a local one.
        num_replicas: actors in the pool (default: one per GPU, or per cpus_per_replica CPUs).
        batch_size, precision, cuda_graphs, memory_format: as fastad.Scorer; batches are cut like
            the local path's.
        device: "cpu" or "cuda" (one GPU per replica).
        resume: go on from the batches an earlier attempt of this run finished (as the local
            engine does); False scores every image again.
        save_maps: write the per-image maps (False: scores only).
        cpus_per_replica: CPUs each actor reserves (and decodes images with).
        overwrite: replace another run's results in `out` (otherwise FileExistsError).

    Returns:
        DistributedScores (paths and image_scores as in scores.csv, skipped files, counts). Images
        that fail to decode in a replica are reported on stderr and listed in `skipped`.
    """
    _check_arguments(device, batch_size, precision, cuda_graphs, memory_format, num_replicas, cpus_per_replica)
    check_bool("overwrite", overwrite)
    check_bool("resume", resume)
    check_bool("save_maps", save_maps)
    ray = require_ray()
    model, header, source = open_model(checkpoint, "cpu")
    threshold = calibrated_threshold(header)
    paths, skipped = list_inputs(paths_or_folder, model.image_size)
    options = replica.ReplicaOptions(device, batch_size, precision, cuda_graphs, memory_format, save_maps,
                                     cpus_per_replica)
    settings = {"engine": "ray", **scoring_settings(device, batch_size, precision, cuda_graphs, memory_format,
                                                    model.image_size, threshold), "maps": "npy" if save_maps else None}
    images = str(Path(paths_or_folder).resolve()) if isinstance(paths_or_folder, (str, Path)) else "a list of paths"
    out = Path(out)
    with locked(out):
        claim(out, run_manifest(source, model, images, paths, settings), overwrite, owned_entries(save_maps, False))
        if not resume:
            discard(out)
        finished, start = resume_point(out, paths, batch_size, threshold)
        pending = list(range(start, len(paths)))
        started = time.perf_counter()
        failed = _score_pending(ray, address, model, paths, pending, out, options, threshold,
                                num_replicas) if pending else []
        rows = read_finished(out / SCORES_FILE, paths, threshold)
        timing = {"seconds": round(time.perf_counter() - started, 3), "images": len(pending) - len(failed)}
        mark_complete(out, skipped=[{"path": p, "reason": r} for p, r in skipped + failed], timing=timing)
    return DistributedScores([row.path for row in rows], torch.tensor([row.score for row in rows], dtype=torch.float32),
                             skipped + failed, scored=len(pending) - len(failed), resumed=len(finished))


def _score_pending(ray, address, model, paths, pending, out, options, threshold, num_replicas) -> list[tuple[str, str]]:
    """Connects to (or starts) Ray, scores the pending input positions into out's scores folder;
    [(path, reason)] of the images that failed to decode, each reported on stderr."""
    started = False
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"address {address!r} given but Ray is already initialised in this process; "
                             "pass address=None to use that session")
    else:
        ray.init(address=address)
        started = True
    try:
        with BatchWriter(out, threshold) as writer:
            written = InOrder(writer, pending, options.batch_size)
            for row in _run(ray, model, [paths[i] for i in pending], pending, out, options, num_replicas):
                written.add(row)
            written.finish()
    finally:
        if started:
            ray.shutdown()
    for path, reason in written.failed:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    return written.failed


def _run(ray, model, paths, indices, out, options, num_replicas):
    """Runs the actor pool over the pending images; yields one row per image as it comes back."""
    packed_ref = ray.put(pack_model(model))  # once: every actor (and every restart) fetches this object
    rows = batches(indices, paths, options.batch_size)
    size = min(_replicas(ray, options.device, num_replicas, options.decode_threads), len(rows))
    # a few blocks per replica: tasks stay balanced, and a retried task redoes few batches
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), BLOCKS_PER_REPLICA * size))
    scored = dataset.map_batches(
        replica.ScoreReplica,
        batch_size=1,  # one row = one scoring batch of up to batch_size images
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"packed_ref": [packed_ref], "out": str(out), "options": options},
        num_cpus=options.decode_threads,
        num_gpus=1 if options.device == "cuda" else 0,
        # A replica that dies (node lost, OOM kill) is restarted and its unfinished batches are
        # retried on it: Ray Data's actor pools default to max_restarts=-1, max_task_retries=-1
        # (Ray 2.60 does; passing them as raw remote args is deprecated there, so they are not
        # restated; tests/test_distributed.py kills a replica to check it).
    )
    yield from scored.iter_rows()
