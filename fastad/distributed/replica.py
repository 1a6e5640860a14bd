"""The Ray Data UDF: one model replica (a fastad.Scorer) per actor, scoring whole batches and
writing each image's map as it goes; the driver writes the rows it returns (records.InOrder).

Nothing here imports Ray: the actor pool is set up in fastad.distributed.ray_scoring.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fastad.data.images import UnreadableImageError, load_image
from fastad.engine.results import save_map
from fastad.engine.scorer import Scorer
from fastad.engine.scores_folder import map_file
from fastad.files import file_fingerprint
from fastad.distributed.weights import unpack_model

# one row per image: what records.InOrder reads
COLUMN_TYPES = {"index": np.int64, "path": str, "score": np.float64, "error": str, "fingerprint": str}


@dataclass(frozen=True)
class ReplicaOptions:
    """How every replica scores: device ("cpu" or "cuda": the GPU Ray assigned to the actor),
    batch_size, precision, cuda_graphs, memory_format (as fastad.Scorer), save_maps (write
    out/maps/<name>.npy) and decode_threads (images decoded in parallel within a batch)."""

    device: str
    batch_size: int
    precision: str
    cuda_graphs: bool
    memory_format: str
    save_maps: bool
    decode_threads: int = 1


class ScoreReplica:
    """Ray Data class UDF. Built once per actor from the packed model (fetched from the object
    store, not read from the checkpoint file); each call takes rows {"indices": [B], "paths": [B]}
    (one scoring batch per row, see inputs.batches) and returns one row per image:
    {"index", "path", "score" (NaN if unreadable), "error" ("" or why the file could not be
    read), "fingerprint" (fastad.files.file_fingerprint of the bytes scored, or "")}.

    Args:
        packed_ref: [ObjectRef] of fastad.distributed.weights.pack_model's dict (in a list so Ray
            hands the reference over unresolved and the actor fetches it itself).
        out: the output folder (shared by every node).
        options: ReplicaOptions.
    """

    def __init__(self, packed_ref, out: str, options: ReplicaOptions):
        import ray

        model = unpack_model(ray.get(packed_ref[0]))
        self.scorer = Scorer(model, options.device, options.batch_size, options.precision, options.cuda_graphs,
                             options.memory_format)
        self.out, self.save_maps = out, options.save_maps
        self.pool = ThreadPoolExecutor(max(1, options.decode_threads))

    def _decode(self, path: str):
        """(image, file_fingerprint of the bytes it was decoded from), or the reason it failed."""
        try:
            fingerprint = file_fingerprint(path)
            return load_image(path, self.scorer.image_size), fingerprint
        except UnreadableImageError as error:
            return error.reason
        except OSError as error:
            return error.strerror or str(error)

    def score_batch(self, indices: list[int], paths: list[str]) -> list[dict]:
        """Scores one batch (decoded in input order; the undecodable images left out of it, as
        the local engine leaves them) and writes each image's map."""
        decoded = list(self.pool.map(self._decode, paths))
        good = [i for i, image in enumerate(decoded) if isinstance(image, tuple)]
        rows = [{"index": int(indices[i]), "path": str(paths[i]), "score": float("nan"), "error": decoded[i],
                 "fingerprint": ""} for i in range(len(paths)) if i not in good]
        if not good:
            return rows
        result = self.scorer.score(torch.stack([decoded[i][0] for i in good]))
        scores, maps = result.image_scores.float().cpu(), result.maps.float().cpu()
        for j, i in enumerate(good):
            index, path = int(indices[i]), str(paths[i])
            if self.save_maps:
                save_map(map_file(self.out, path, index), maps[j])
            rows.append({"index": index, "path": path, "score": float(scores[j]), "error": "",
                         "fingerprint": decoded[i][1]})
        return rows

    def __call__(self, batch: dict) -> dict:
        """batch {"indices": [R] lists, "paths": [R] lists} (numpy format) -> {"index" [N],
        "path" [N], "score" [N], "error" [N], "fingerprint" [N]} over the N images of its R
        scoring batches."""
        rows = []
        for indices, paths in zip(batch["indices"], batch["paths"]):
            rows += self.score_batch(list(indices), list(paths))
        return {key: np.array([row[key] for row in rows], dtype=dtype) for key, dtype in COLUMN_TYPES.items()}
