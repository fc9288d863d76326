"""Files of Stages 2 and 3: folders that appear whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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
