"""Built-in dataset `builtin:<texture>` from scikit-image's real texture photographs.

The photos (brick, grass, gravel) are 512x512 gray. Normal training crops come from the top
half (rows 0-255), test crops from the bottom half (rows 256-511), so no test pixel was ever
seen in training. Crops are `crop` px square (default 128) at positions drawn under the seed,
resized bilinearly to `size`, gray replicated to 3 channels. Half of the test crops (chosen
under the seed) get one synthetic defect each, the five types (fastad.data.defects.DEFECTS)
taking turns so each appears; the defect is painted at output resolution, so its mask is exact:
every pixel outside it equals the clean crop. Everything is a function of (texture, split,
seed, index, size, crop): the same arguments give bit-identical samples.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fastad.data import defects
from fastad.data.images import normalize_size
from fastad.data.sample import ANOMALOUS, NORMAL, Sample

TEXTURES = ("brick", "grass", "gravel")
SPLITS = ("train", "test")
PHOTO = 512


@functools.lru_cache(maxsize=None)
def load_photo(texture: str) -> torch.Tensor:
    """[512, 512] float32 in [0, 1]: one of scikit-image's bundled texture photos."""
    import skimage.data

    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    photo = torch.from_numpy(getattr(skimage.data, texture)().astype(np.float32) / 255.0)
    if photo.shape != (PHOTO, PHOTO):
        raise RuntimeError(f"scikit-image's {texture} photo is {tuple(photo.shape)}, expected {(PHOTO, PHOTO)}")
    return photo


class BuiltinDataset(Dataset):
    """BuiltinDataset(texture, split, seed=0, size=256, n_train=40, n_test=20, crop=128)[i]
    -> Sample, image [3, H, W] float32 in [0, 1], mask [H, W] bool, (H, W) = size.

    boxes[i] = (top, left, height, width) of sample i's crop in the 512x512 photo;
    defect_of[i] = "good" or the defect type; skipped is always empty (nothing is read from disk).
    """

    def __init__(self, texture: str = "brick", split: str = "train", seed: int = 0, size=256,
                 n_train: int = 40, n_test: int = 20, crop: int = 128):
        if texture not in TEXTURES:
            raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, value, low in (("seed", seed, 0), ("n_train", n_train, 1), ("n_test", n_test, 2), ("crop", crop, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if crop > PHOTO // 2:
            raise ValueError(f"crop must be at most {PHOTO // 2} (half the photo's height), got {crop}")
        self.texture, self.split, self.seed, self.crop = texture, split, seed, crop
        self.size = normalize_size(size) or (crop, crop)
        self.skipped: list[tuple[str, str]] = []
        count = n_train if split == "train" else n_test
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        row0 = 0 if split == "train" else PHOTO // 2
        tops = rng.integers(row0, row0 + PHOTO // 2 - crop + 1, count)
        lefts = rng.integers(0, PHOTO - crop + 1, count)
        self.boxes = [(int(t), int(l), crop, crop) for t, l in zip(tops, lefts)]
        self.defect_of = ["good"] * count
        if split == "test":
            for k, i in enumerate(sorted(rng.permutation(count)[: count // 2].tolist())):
                self.defect_of[i] = defects.DEFECTS[k % len(defects.DEFECTS)]

    def labels(self) -> list[int]:
        return [NORMAL if d == "good" else ANOMALOUS for d in self.defect_of]

    def __len__(self) -> int:
        return len(self.boxes)

    def _resized(self, photo: torch.Tensor, top: int, left: int) -> torch.Tensor:
        patch = photo[top:top + self.crop, left:left + self.crop][None, None]
        if tuple(patch.shape[2:]) != self.size:
            patch = F.interpolate(patch, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return patch[0].clamp(0, 1).expand(3, -1, -1).contiguous()

    def clean_image(self, index: int) -> torch.Tensor:
        """[3, H, W]: sample index's crop before any defect is painted."""
        top, left, _, _ = self.boxes[index]
        return self._resized(load_photo(self.texture), top, left)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image = self.clean_image(index)
        defect = self.defect_of[index]
        mask = torch.zeros(self.size, dtype=torch.bool)
        if defect != "good":
            rng = np.random.default_rng([self.seed, 2, index])
            if defect == "cut_paste":
                others = [t for t in TEXTURES if t != self.texture]
                other = others[int(rng.integers(len(others)))]
                source_top, source_left = (int(v) for v in rng.integers(0, PHOTO - self.crop + 1, 2))
                source = self._resized(load_photo(other), source_top, source_left)
                image, mask = defects.cut_paste(image, rng, source)
            else:
                image, mask = getattr(defects, defect)(image, rng)
        path = f"builtin:{self.texture}/{self.split}/{index:03d}"
        return Sample(image, mask, NORMAL if defect == "good" else ANOMALOUS, path, defect)
