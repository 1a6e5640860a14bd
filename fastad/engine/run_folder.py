"""An output folder belongs to one run: an exclusive lock while a run writes it, and a manifest
that says which run it holds.

    with locked(out):                                   # a second run fails at once (RunFolderBusy)
        resuming = claim(out, manifest, overwrite, OWNED)

The lock is an flock on out/.fastad.lock (released by the kernel when the process dies, so a
killed run never leaves the folder locked). A process forked while the lock is held (a
DataLoader worker) closes its copy of the lock at once, so the lock dies with the run, not with
the last of its workers. The manifest, out/run.json, holds what makes the results of a run what
they are (inputs, checkpoint, settings) and the entries of the folder the run writes ("owns");
a later run with the same manifest resumes, any other is refused unless it asks to overwrite,
and overwriting removes only the entries a manifest recorded as its run's own.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from fastad.files import remove_temp_files, write_json

LOCK_FILE = ".fastad.lock"
MANIFEST_FILE = "run.json"
# manifest entries that do not identify a run: its status, the fastad version, where the
# checkpoint was read from (its weights' digest identifies it), the entries it owns, what the
# last attempt skipped and how long it took
INFORMATIONAL_KEYS = ("complete", "fastad", "checkpoint", "owns", "skipped", "timing")
OWNS_KEY = "owns"
_held: set[int] = set()  # the lock file descriptors this process holds


def _close_inherited_locks() -> None:
    """In a forked child: closes its copies of the parent's lock descriptors (the parent keeps
    the lock), so that the child outliving a killed parent does not keep the folder locked."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunFolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def locked(folder):
    """Creates `folder` if needed and holds its exclusive lock for the block; RunFolderBusy at
    once (no waiting) when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise RunFolderBusy(f"{folder} is in use by another fastad run{by}; wait for it to finish or choose "
                                "another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held.add(fd)
        yield folder
    finally:
        _held.discard(fd)
        os.close(fd)


def read_manifest(folder) -> dict | None:
    """folder/run.json, or None when there is none; ValueError naming the file when it is not JSON."""
    path = Path(folder) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a fastad run manifest ({error}); pass --overwrite to replace the "
                         "folder's results") from None


def _difference(saved: dict, wanted: dict) -> str | None:
    """The first manifest entry in which two runs differ, as words, or None when they are the same run."""
    for key in sorted(set(saved) | set(wanted)):
        if key in INFORMATIONAL_KEYS:
            continue
        if saved.get(key) != wanted.get(key):
            return f"its {key} was {saved.get(key)!r}, this run's is {wanted.get(key)!r}"
    return None


def clear(folder, owned) -> None:
    """Removes the entries `owned` (file or folder names) of folder."""
    for name in owned:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def recorded_own(saved: dict | None, legacy: tuple = ()) -> list[str]:
    """The folder entries a manifest records as its run's own; `legacy` for a manifest written
    before manifests recorded them."""
    if saved is None:
        return []
    owns = saved.get(OWNS_KEY, list(legacy))
    return [name for name in owns if isinstance(name, str) and name and "/" not in name and name not in ("..", ".")]


def claim(folder, manifest: dict, overwrite: bool, owned) -> bool:
    """Makes `folder` (locked by the caller) this run's: returns True when it already holds this
    very run (same manifest: resume), False when it starts fresh. `owned`: the entries this run
    writes there, recorded in the manifest. With overwrite, the entries the folder's manifest
    records as its run's own are removed first (an old manifest of the same kind: `owned`).
    FileExistsError naming the folder when it holds another run's results (another manifest,
    without overwrite: the difference is named) or an entry of `owned` that no manifest records
    (files fastad did not write: they are never removed). Temporary files of a killed run are
    removed either way."""
    folder = Path(folder)
    saved = read_manifest(folder)
    legacy = tuple(owned) if saved is not None and saved.get("kind") == manifest.get("kind") else ()
    if overwrite and saved is not None:
        clear(folder, (*recorded_own(saved, legacy), MANIFEST_FILE))
        saved = None
    recorded = recorded_own(saved, legacy)
    foreign = [name for name in owned if name not in recorded and (folder / name).exists()]
    if foreign:
        raise FileExistsError(f"{folder} holds {', '.join(foreign)}, which no fastad run recorded as its own (in "
                              f"{MANIFEST_FILE}); fastad does not remove them: move them away or choose another "
                              "output folder")
    if saved is not None:
        difference = _difference(saved, manifest)
        if difference is not None:
            raise FileExistsError(f"{folder} holds another run's results ({difference}); pass --overwrite to "
                                  "replace them or choose another output folder")
    remove_temp_files(folder)
    owns = sorted(set(recorded) | set(owned))
    if saved is None or saved.get(OWNS_KEY) != owns:
        write_json({**(saved or manifest), OWNS_KEY: owns, "complete": False if saved is None else saved.get(
            "complete", False)}, folder / MANIFEST_FILE)
    return saved is not None


def mark_complete(folder, **facts) -> None:
    """Sets complete: true in folder/run.json, with the informational `facts` (INFORMATIONAL_KEYS)."""
    write_json({**(read_manifest(folder) or {}), **facts, "complete": True}, Path(folder) / MANIFEST_FILE)


def digest(values) -> str:
    """sha256 (hex) of a list of strings, one per line (UTF-8; undecodable file-name bytes as
    they were)."""
    return hashlib.sha256("\n".join(map(str, values)).encode("utf-8", "surrogateescape")).hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) of a module's state_dict: names, dtypes, shapes and bytes (layout-independent)."""
    sha = hashlib.sha256()
    for name, value in module.state_dict().items():
        flat = value.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{name}|{flat.dtype}|{tuple(value.shape)}|".encode())
        sha.update(flat.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
