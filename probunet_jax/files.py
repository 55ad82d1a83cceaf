"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one.

Every file the project writes outside orbax (configs, evaluation tables, sweep records,
benchmark reports, data set manifests) goes through :func:`write_atomic`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_atomic(
    path: str | os.PathLike, content: str | bytes | Callable[[IO[bytes]], None]
) -> None:
    """Writes ``content`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
      path: the file; its folder is created if missing.
      content: text (UTF-8), bytes, or a function that writes to a binary file object (e.g.
        ``lambda f: np.savez_compressed(f, **arrays)``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, value: Any, **dumps_kwargs) -> None:
    """``value`` as indented JSON (``json.dumps`` keyword arguments pass through), atomically."""
    write_atomic(path, json.dumps(value, indent=2, **dumps_kwargs) + "\n")
