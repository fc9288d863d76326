"""Files and folders that appear whole: a reader sees the old version or the new, never half.

Every writer of fmrilm-bids that replaces a file goes through :func:`atomic_write` (a
temporary file in the same folder, then :func:`os.replace`); folders that must appear as
one (a trained model, a checkpoint) go through :func:`publish_directory`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, then rename it into place.

    Parameters
    ----------
    path : Path
        The file to (re)place; its folder is created.
    write : callable
        ``write(temporary_path)`` writes the whole content (any library's saver).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial"
                                   + "".join(path.suffixes), dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (flushed to disk before the rename)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())

    return atomic_write(path, write)


def publish_directory(target: Path, write: Callable[[Path], object]) -> Path:
    """Fill a folder so that readers see the old one or the new one, never a mix.

    ``write`` fills a temporary folder beside ``target``, which then replaces ``target``
    by renames (same file system).

    Returns
    -------
    Path
        ``target``.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    retired = None
    try:
        write(partial)
        for path in [partial, *partial.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, retired / target.name)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if retired is not None and not target.exists():
            os.rename(retired / target.name, target)
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    return target
