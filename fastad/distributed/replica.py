"""The Ray Data UDF: one model replica (a fastad.Scorer) per actor, scoring whole batches and
writing each image's map and record as it goes.

Nothing here imports Ray: the actor pool is set up in fastad.distributed.ray_scoring.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fastad.data.images import UnreadableImageError, load_image
from fastad.engine.results import save_map
from fastad.files import file_fingerprint
from fastad.engine.scorer import Scorer
from fastad.distributed.records import is_finished, map_path, write_record
from fastad.distributed.weights import unpack_model

COLUMNS = {"index": np.int64, "path": str, "score": np.float64, "error": str}  # one row per image


class ScoreReplica:
    """Ray Data class UDF. Built once per actor from the packed model (fetched from the object
    store, not read from the checkpoint file); each call takes rows {"indices": [B], "paths": [B]}
    (one scoring batch per row, see inputs.batches) and returns one row per image:
    {"index", "path", "score" (NaN if unreadable), "error" ("" or why the file could not be read)}.

    Args:
        packed_ref: [ObjectRef] of fastad.distributed.weights.pack_model's dict (in a list so Ray
            hands the reference over unresolved and the actor fetches it itself).
        device: "cpu" or "cuda" (the GPU Ray assigned to this actor).
        batch_size, precision, cuda_graphs: as fastad.Scorer.
        out: the output folder (shared by every node).
        save_maps: write out/maps/<name>.npy.
        decode_threads: images decoded in parallel within a batch.
    """

    def __init__(self, packed_ref, device: str, batch_size: int, precision: str, cuda_graphs: bool, out: str,
                 save_maps: bool, decode_threads: int = 1):
        import ray

        model = unpack_model(ray.get(packed_ref[0]))
        self.scorer = Scorer(model, device, batch_size, precision, cuda_graphs)
        self.out, self.save_maps = out, save_maps
        self.pool = ThreadPoolExecutor(max(1, decode_threads))

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
        """Scores one batch (decoded in input order), writes each image's map, then its record. A
        batch whose every image already has its record (a retried task whose first attempt got
        that far) is not scored again; a partly finished one is scored whole, so that its
        composition, and with it every float, stays that of the local path's batch."""
        if all(is_finished(self.out, str(p), int(i), self.save_maps) for i, p in zip(indices, paths)):
            return []
        decoded = list(self.pool.map(self._decode, paths))
        good = [i for i, image in enumerate(decoded) if isinstance(image, tuple)]
        rows = [{"index": int(indices[i]), "path": str(paths[i]), "score": float("nan"), "error": decoded[i]}
                for i in range(len(paths)) if i not in good]
        if not good:
            return rows
        result = self.scorer.score(torch.stack([decoded[i][0] for i in good]))
        scores, maps = result.image_scores.float().cpu(), result.maps.float().cpu()
        for j, i in enumerate(good):
            index, path, score = int(indices[i]), str(paths[i]), float(scores[j])
            if self.save_maps:
                save_map(map_path(self.out, path, index), maps[j])
            write_record(self.out, path, index, score, self.save_maps, decoded[i][1])
            rows.append({"index": index, "path": path, "score": score, "error": ""})
        return rows

    def __call__(self, batch: dict) -> dict:
        """batch {"indices": [R] lists, "paths": [R] lists} (numpy format) -> {"index" [N],
        "path" [N], "score" [N], "error" [N]} over the N images of its R scoring batches."""
        rows = []
        for indices, paths in zip(batch["indices"], batch["paths"]):
            rows += self.score_batch(list(indices), list(paths))
        return {key: np.array([row[key] for row in rows], dtype=dtype) for key, dtype in COLUMNS.items()}
