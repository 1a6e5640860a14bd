"""Fuzz targets of tests/test_fuzz.py (a brief run, or a long one with FASTAD_FUZZ_EXAMPLES set).

Each target takes one input and checks that it ends in a result that keeps the reader's
contract or in the named error the reader documents, never in any other exception; it returns
which ("result" or "error"):

    image_target(data)       load_image -> [3, H, W] float32 in [0, 1], or UnreadableImageError
    checkpoint_target(data)  load_checkpoint -> Checkpoint, or ValueError naming the file
    spec_target(text)        parse_spec -> (kind, arguments), or ValueError / TypeError

The inputs are random bytes and mutations (overwritten bytes, flipped bits, cuts) of valid
seed files: 8- and 16-bit PNGs (gray, colour, palette, with sBIT), a JPEG with an EXIF
orientation, BMP, 16-bit colour and float TIFFs, and a small trained checkpoint.
"""
from __future__ import annotations

import io
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st
from PIL import Image

WORK = Path(tempfile.mkdtemp(prefix="fastad-fuzz-"))
EXPECTED_KINDS = ("builtin", "wide", "mvtec", "folder")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png16_colour(values: np.ndarray, sbit: int) -> bytes:
    import png

    height, width, _ = values.shape
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=False, bitdepth=16).write(buffer, values.reshape(height, -1).tolist())
    raw = buffer.getvalue()
    end = 8 + 8 + 13 + 4
    return raw[:end] + _png_chunk(b"sBIT", bytes([sbit] * 3)) + raw[end:]


def image_seeds() -> list[bytes]:
    """Small valid files of every kind load_image reads."""
    import tifffile

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, colour.astype(np.uint16) * 257, photometric="rgb")
    return [
        _encoded(Image.fromarray(colour), "PNG"),
        _encoded(Image.fromarray(colour[..., 0]), "PNG"),
        _encoded(Image.fromarray(colour).convert("P"), "PNG"),
        _encoded(Image.fromarray(colour[..., 0].astype(np.uint16) * 16), "PNG"),
        _png16_colour((colour.astype(np.uint16) * 16), 12),
        _encoded(Image.fromarray(colour), "JPEG", exif=exif),
        _encoded(Image.fromarray(colour), "BMP"),
        tiff.getvalue(),
        _encoded(Image.fromarray(colour[..., 0].astype(np.float32) / 255), "TIFF"),
    ]


def mutated(seeds: list[bytes], header_bytes: int = 64):
    """Strategy: a seed with up to 8 bytes overwritten or bits flipped (half of them in its first
    `header_bytes`), maybe cut short, or random bytes."""
    def mutate(draw):
        seed = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            span = min(len(seed), header_bytes) if draw(st.booleans()) else len(seed)
            position = draw(st.integers(0, span - 1))
            if draw(st.booleans()):
                seed[position] ^= 1 << draw(st.integers(0, 7))
            else:
                seed[position] = draw(st.integers(0, 255))
        if draw(st.integers(0, 4)) == 0:
            seed = seed[:draw(st.integers(0, len(seed)))]
        return bytes(seed)

    return st.one_of(st.composite(lambda draw: mutate(draw))(), st.binary(max_size=512))


def image_target(data: bytes, name: str = "fuzz.png") -> str:
    from fastad.data.images import UnreadableImageError, load_image

    path = WORK / name
    path.write_bytes(data)
    outcome = "error"
    for size in (None, 8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PIL's notes on the corrupt EXIF it skips
                image = load_image(path, size)
        except UnreadableImageError as error:
            assert str(path) in str(error)
            continue
        assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3, image.shape
        assert bool(torch.isfinite(image).all()) and float(image.min()) >= 0 and float(image.max()) <= 1
        outcome = "result"
    return outcome


def checkpoint_seed() -> bytes:
    """A small trained raw-pixel checkpoint (format 2, with digests)."""
    from fastad.engine import train
    from fastad.models import create_model

    run = WORK / "seed-run"
    model = create_model("rawpixel", patch_size=16, stride=16, pool=4)
    train(model, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), run_dir=run, progress=False)
    return (run / "checkpoint.safetensors").read_bytes()


def checkpoint_target(data: bytes) -> str:
    from fastad.engine.checkpoint import load_checkpoint

    path = WORK / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loaded = load_checkpoint(path)
    except ValueError as error:
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        return "error"
    assert loaded.model.name == loaded.header["model"]
    return "result"


def specs():
    """Strategy: spec-like text (a known kind, maybe, then any text) or anything at all."""
    kinds = st.sampled_from(["builtin:", "wide:", "mvtec:", "folder:", "folder:normal=", "folder:test=a,normal=",
                             "", ":"])
    return st.one_of(st.builds(lambda k, t: k + t, kinds, st.text(max_size=40)),
                     st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.lists(st.text(max_size=3))))


def spec_target(text) -> str:
    from fastad.data.spec import parse_spec, spec_name

    try:
        kind, arguments = parse_spec(text)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error).strip(), str(error)
        return "error"
    assert kind in EXPECTED_KINDS and isinstance(arguments, dict)
    assert isinstance(spec_name(text), str)
    return "result"
