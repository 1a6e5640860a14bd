"""Dataset specs: one string names a dataset everywhere (command line, export, training).

    builtin:<texture>                           brick, grass or gravel (fastad.data.builtin)
    wide:<texture>                              the wider builtin benchmark (fastad.data.builtin:
                                                more photos, twelve defect families)
    mvtec:<root>/<category>                     an MVTec-AD layout folder (fastad.data.mvtec)
    folder:normal=DIR,test=DIR[,masks=DIR]      plain folders (fastad.data.folder); DIRs
                                                must not contain commas
"""
from __future__ import annotations

from pathlib import Path

FORMS = "builtin:<texture>, wide:<texture>, mvtec:<root>/<category> or folder:normal=DIR,test=DIR[,masks=DIR]"
FOLDER_KEYS = ("normal", "test", "masks")


def parse_spec(spec: str) -> tuple[str, dict]:
    """spec -> (kind, arguments): ("builtin" or "wide", {"texture"}), ("mvtec", {"root", "category"}) or
    ("folder", {"normal_dir", "test_dir", "masks_dir"}); ValueError saying what was expected."""
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str ({FORMS}), got {type(spec).__name__}")
    kind, colon, rest = spec.partition(":")
    if not colon or not rest:
        raise ValueError(f"spec must be {FORMS}, got {spec!r}")
    if kind in ("builtin", "wide"):
        from fastad.data.builtin import TEXTURES, WIDE_TEXTURES

        textures = TEXTURES if kind == "builtin" else WIDE_TEXTURES
        if rest not in textures:
            raise ValueError(f"{kind} texture must be one of {textures}, got {rest!r} in spec {spec!r}")
        return kind, {"texture": rest}
    if kind == "mvtec":
        path = Path(rest.rstrip("/"))
        if not path.name or path.name in (".", ".."):
            raise ValueError(f"mvtec spec must be mvtec:<root>/<category>, got {spec!r}")
        return kind, {"root": str(path.parent), "category": path.name}
    if kind == "folder":
        args = {}
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or key not in FOLDER_KEYS or not value:
                raise ValueError(f"folder spec parts must be normal=DIR, test=DIR or masks=DIR, got {part!r} in {spec!r}")
            if f"{key}_dir" in args:
                raise ValueError(f"folder spec gives {key}= twice in {spec!r}")
            args[f"{key}_dir"] = value
        missing = [k for k in ("normal", "test") if f"{k}_dir" not in args]
        if missing:
            raise ValueError(f"folder spec needs {' and '.join(k + '=DIR' for k in missing)}, got {spec!r}")
        return kind, {"masks_dir": None, **args}
    raise ValueError(f"spec kind must be builtin, mvtec or folder, or wide for the wider builtin benchmark "
                     f"({FORMS}), got {kind!r} in {spec!r}")


def spec_name(spec: str) -> str:
    """A short name for the dataset: the texture, the MVTec category or the test folder's name."""
    kind, args = parse_spec(spec)
    if kind in ("builtin", "wide"):
        return args["texture"]
    if kind == "mvtec":
        return args["category"]
    return Path(args["test_dir"].rstrip("/")).name or "folder"


def open_dataset(spec: str, split: str = "train", size=256, seed: int = 0):
    """spec, split "train"|"test" (or "val" for wide specs: normal crops and synthetic defects
    from the training region, never the test region) -> a torch Dataset of
    fastad.data.Sample (image [3, H, W], mask [H, W], (H, W) = size); seed only matters for
    builtin and wide datasets."""
    kind, args = parse_spec(spec)
    if kind in ("builtin", "wide"):
        from fastad.data.builtin import BuiltinDataset, WideDataset

        return (BuiltinDataset if kind == "builtin" else WideDataset)(args["texture"], split, seed=seed, size=size)
    if kind == "mvtec":
        from fastad.data.mvtec import MVTecDataset

        return MVTecDataset(args["root"], args["category"], split, size=size)
    from fastad.data.folder import FolderDataset

    return FolderDataset(split=split, size=size, **args)
