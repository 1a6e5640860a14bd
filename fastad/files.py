"""Writing files so that a crash never leaves a half-written one where the user expects a file.

Every file is created the way open() creates it (mode 0o666 less the process umask), so results
on a shared server are as readable as the user's umask allows. A failed write names the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file next to path: (fd, its path); mode 0o666 & ~umask."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_error(error: OSError, path) -> OSError:
    """error (raised while writing path) as an OSError of the same errno whose message names path;
    a short write without an errno (numpy's "N requested and M written") says the disk may be full."""
    if error.errno is None:
        return OSError(f"cannot write {path}: only part of the data was written ({error}); is the disk full?")
    reason = error.strerror or str(error)
    return OSError(error.errno, f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Yields a file object on a temporary file next to `path`; on success it is flushed, synced
    and renamed onto `path` (os.replace, atomic on POSIX), on error removed. Creates parent
    folders. An OSError (a full disk, a read-only folder) is re-raised naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and not str(error).startswith("cannot write"):
            raise write_error(error, path) from error
        raise


def write_json(obj, path) -> None:
    """obj -> indented JSON at path, written atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def file_fingerprint(path) -> str:
    """What a result computed from the file at path was computed from: "<size> <mtime_ns>
    <sha256 hex of its bytes>" (sha256: OpenSSL, SHA-NI where the CPU has it). OSError when it
    cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{stat.st_size} {stat.st_mtime_ns} {digest.hexdigest()}"


def same_content(a: str, b: str) -> bool:
    """Two file_fingerprint()s of the same bytes (size and digest equal; the time may differ)."""
    size_a, _, digest_a = a.split(" ")
    size_b, _, digest_b = b.split(" ")
    return size_a == size_b and digest_a == digest_b


def changed_since(path, recorded: str | None) -> str | None:
    """Why the file at path no longer holds the bytes of the file_fingerprint `recorded` (None:
    none was recorded), or None when it does."""
    if recorded is None:
        return "what it was scored from is not recorded"
    try:
        now = file_fingerprint(path)
    except OSError as error:
        return f"it cannot be read now ({error.strerror or error})"
    return None if same_content(now, recorded) else "it changed since it was scored"


def remove_temp_files(folder) -> int:
    """Removes the temporary files atomic_write leaves behind when its process is killed
    (.<name>.<hex>.tmp) anywhere under folder; returns how many. Only call it on a folder no
    other process is writing (e.g. while holding its run lock)."""
    removed = 0
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
