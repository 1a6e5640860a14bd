"""Built-in datasets from real photographs that scikit-image ships (nothing is downloaded).

`builtin:<texture>` (BuiltinDataset): brick, grass, gravel, 512x512 gray. Normal training crops
come from the top half (rows 0-255), test crops from the bottom half (rows 256-511), so no test
pixel was ever seen in training. Half of the test crops get one synthetic defect each, the five
types (fastad.data.defects.DEFECTS) taking turns. This spec is frozen (train and test splits, as
first published) so that earlier numbers stay comparable; its training crops cover the whole top
half, which leaves no room for a validation split.

`wide:<texture>` (WideDataset), the wider benchmark: WIDE_TEXTURES (the three above plus more
photos, gray or colour) and the twelve defect families of defects.WIDE_DEFECTS, five colour /
intensity ones and seven subtle ones that change structure or sharpness, and a validation split
"val". Its top half is split by columns: training crops from the left part, validation crops
(half of them with a defect, like test) from the right part (the last max(crop, 3/8 of the
width) columns), so val pixels were never seen in training and no test pixel is ever seen by a
choice taken on val; test crops come from the bottom half.

Crops are `crop` px square (default 128) at positions drawn under the seed, resized bilinearly to
`size`, gray replicated to 3 channels. Defects are painted at output resolution, so each mask is
exact: every pixel outside it equals the clean crop. Everything is a function of (texture, split,
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
WIDE_SPLITS = ("train", "test", "val")  # a split's index seeds its crop positions
PHOTO = 512
WIDE_PHOTOS = {"brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon",
               "tissue": "immunohistochemistry", "hubble": "hubble_deep_field", "coins": "coins"}
"""wide:<texture> name -> the scikit-image data function that returns its photo."""
WIDE_TEXTURES = tuple(WIDE_PHOTOS)


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


@functools.lru_cache(maxsize=None)
def load_wide_photo(texture: str) -> torch.Tensor:
    """[C, H, W] float32 in [0, 1], C = 1 (gray) or 3 (RGB): the photo of wide:<texture>."""
    import skimage.data

    if texture not in WIDE_PHOTOS:
        raise ValueError(f"texture must be one of {WIDE_TEXTURES}, got {texture!r}")
    photo = torch.from_numpy(getattr(skimage.data, WIDE_PHOTOS[texture])().astype(np.float32) / 255.0)
    return photo[None] if photo.ndim == 2 else photo[..., :3].permute(2, 0, 1).contiguous()


def _check_counts(**values: tuple[int, int]) -> None:
    for name, (value, low) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class BuiltinDataset(Dataset):
    """BuiltinDataset(texture, split "train"|"test", seed=0, size=256, n_train=40, n_test=20,
    crop=128, n_val=20)[i] -> Sample, image [3, H, W] float32 in [0, 1], mask [H, W]
    bool, (H, W) = size.

    boxes[i] = (top, left, height, width) of sample i's crop in the photo; defect_of[i] = "good"
    or the defect type; skipped is always empty (nothing is read from disk). n_val sizes the val
    split of subclasses that have one (WideDataset).
    """

    prefix = "builtin"
    textures = TEXTURES
    splits = SPLITS
    families = defects.DEFECTS

    def __init__(self, texture: str = "brick", split: str = "train", seed: int = 0, size=256,
                 n_train: int = 40, n_test: int = 20, crop: int = 128, n_val: int = 20):
        if texture not in self.textures:
            raise ValueError(f"texture must be one of {self.textures}, got {texture!r}")
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        _check_counts(seed=(seed, 0), n_train=(n_train, 1), n_test=(n_test, 2), n_val=(n_val, 2), crop=(crop, 16))
        self.texture, self.split, self.seed, self.crop = texture, split, seed, crop
        self.size = normalize_size(size) or (crop, crop)
        self.skipped: list[tuple[str, str]] = []
        count = {"train": n_train, "val": n_val, "test": n_test}[split]
        rng = np.random.default_rng([seed, self.splits.index(split)])
        row0, row1, col0, col1 = self.region(split)
        tops = rng.integers(row0, row1 - crop + 1, count)
        lefts = rng.integers(col0, col1 - crop + 1, count)
        self.boxes = [(int(t), int(l), crop, crop) for t, l in zip(tops, lefts)]
        self.defect_of = ["good"] * count
        if split != "train":
            for k, i in enumerate(sorted(rng.permutation(count)[: count // 2].tolist())):
                self.defect_of[i] = self.families[k % len(self.families)]

    def photo(self, texture: str) -> torch.Tensor:
        """[C, H, W] float32 in [0, 1], C = 1 or 3: the photo of `texture`."""
        return load_photo(texture)[None]

    def region(self, split: str) -> tuple[int, int, int, int]:
        """(first row, end row, first column, end column) of the photo that `split` crops from."""
        if self.crop > PHOTO // 2:
            raise ValueError(f"crop must be at most {PHOTO // 2} (half the photo's height), got {self.crop}")
        return (PHOTO // 2, PHOTO, 0, PHOTO) if split == "test" else (0, PHOTO // 2, 0, PHOTO)

    def source_box(self, rng: np.random.Generator, texture: str) -> tuple[int, int]:
        """(top, left) of the crop of `texture` that a cut_paste defect takes its rectangle from."""
        top, left = (int(v) for v in rng.integers(0, PHOTO - self.crop + 1, 2))
        return top, left

    def labels(self) -> list[int]:
        return [NORMAL if d == "good" else ANOMALOUS for d in self.defect_of]

    def __len__(self) -> int:
        return len(self.boxes)

    def _resized(self, photo: torch.Tensor, top: int, left: int) -> torch.Tensor:
        patch = photo[:, top:top + self.crop, left:left + self.crop][None]
        if tuple(patch.shape[2:]) != self.size:
            patch = F.interpolate(patch, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return patch[0].clamp(0, 1).expand(3, -1, -1).contiguous()

    def clean_image(self, index: int) -> torch.Tensor:
        """[3, H, W]: sample index's crop before any defect is painted."""
        top, left, _, _ = self.boxes[index]
        return self._resized(self.photo(self.texture), top, left)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image = self.clean_image(index)
        defect = self.defect_of[index]
        mask = torch.zeros(self.size, dtype=torch.bool)
        if defect != "good":
            rng = np.random.default_rng([self.seed, 2 if self.split == "test" else 3, index])
            if defect == "cut_paste":
                others = [t for t in self.textures if t != self.texture]
                other = others[int(rng.integers(len(others)))]
                source = self._resized(self.photo(other), *self.source_box(rng, other))
                image, mask = defects.cut_paste(image, rng, source)
            else:
                image, mask = getattr(defects, defect)(image, rng)
        path = f"{self.prefix}:{self.texture}/{self.split}/{index:03d}"
        return Sample(image, mask, NORMAL if defect == "good" else ANOMALOUS, path, defect)


class WideDataset(BuiltinDataset):
    """WideDataset(texture, split "train"|"val"|"test", seed=0, size=256, n_train=40, n_test=48,
    crop=128, n_val=24)[i] -> Sample: the wider benchmark `wide:<texture>` (module docstring).
    texture is one of WIDE_TEXTURES; the defects are defects.WIDE_DEFECTS, taking turns (with the
    defaults every family appears once in val and twice in test). ValueError when crop does not fit
    the photo's val or test region."""

    prefix = "wide"
    textures = WIDE_TEXTURES
    splits = WIDE_SPLITS
    families = defects.WIDE_DEFECTS

    def __init__(self, texture: str = "brick", split: str = "train", seed: int = 0, size=256,
                 n_train: int = 40, n_test: int = 48, crop: int = 128, n_val: int = 24):
        super().__init__(texture, split, seed, size, n_train, n_test, crop, n_val)

    def photo(self, texture: str) -> torch.Tensor:
        return load_wide_photo(texture)

    def region(self, split: str) -> tuple[int, int, int, int]:
        _, h, w = self.photo(self.texture).shape
        val_width = max(self.crop, round(w * 3 / 8))
        if self.crop > min(h // 2, w - val_width):
            raise ValueError(f"crop must be at most {min(h // 2, w - val_width)} for wide:{self.texture} "
                             f"(a {h}x{w} photo), got {self.crop}")
        return {"train": (0, h // 2, 0, w - val_width), "val": (0, h // 2, w - val_width, w),
                "test": (h // 2, h, 0, w)}[split]

    def source_box(self, rng: np.random.Generator, texture: str) -> tuple[int, int]:
        """Taken from the other photo's top half, so no split ever holds another texture's test pixels."""
        _, h, w = self.photo(texture).shape
        return int(rng.integers(0, h // 2 - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
