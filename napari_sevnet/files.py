"""Atomic file output: write to a temporary file beside the target, then rename it into place.

A crash, a kill or a full disk mid-write leaves the old file (or nothing)
and no partial file under the target's name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_sevnet.errors import InputError


def user_cache_dir() -> Path:
    """napari-sevnet's folder in the user's cache: $SEVNET_CACHE_DIR, else $XDG_CACHE_HOME/napari-sevnet (~/.cache)."""
    return Path(os.environ.get("SEVNET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-sevnet")


def private_dir(path: str | os.PathLike) -> Path:
    """``path``, created where missing (with its missing parents) readable by the user alone: the user's cache holds
    scan paths, which name patients, and masks. Best effort: a folder that cannot be made fails at the first write."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError:
            break
    return path


def _read_umask() -> int:
    """The process's umask, read once at import: reading it means setting it, and a file another thread created
    between the two calls would be left writable by everyone (recovery copies and workers write while the GUI runs)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    With ``overwrite=False`` an existing ``path`` is refused before anything is
    written. Permissions follow the umask like a normal ``open()`` would.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise InputError(path, "already exists; refusing to overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(path, f"could not write: {exc.strerror or exc}") from None
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(path, f"could not write: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, names) -> list[Path]:
    """Remove the temporary files :func:`atomic_output` left for ``names`` in ``folder`` when a process was killed mid-write."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
