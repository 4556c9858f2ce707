"""State on disk that only the gateway's own user may read.

The data folder holds the generated admin token and, by default, the SQLite
database with request and response text. Folders are made 0700 and files
0600 whatever the umask, and a file or folder left with a looser mode (by an
older version, a copy, a restore) is tightened when the gateway starts.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current == mode:
        return
    try:
        path.chmod(mode)
    except OSError as exc:
        # someone else's file (a shared volume): say so, and go on with it as it is
        log.warning("could not set mode %o on %s (it is %o): %s", mode, path, current, exc.strerror)


def private_dir(path: str | Path) -> Path:
    """Make ``path`` (and missing parents) if needed, and leave it mode 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    return path


def tighten_dir(path: str | Path) -> None:
    """Mode 0700 for an existing folder; nothing when there is none."""
    _tighten(Path(path), DIR_MODE)


def tighten_file(path: str | Path) -> None:
    """Mode 0600 for an existing file; nothing when there is none."""
    _tighten(Path(path), FILE_MODE)


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """A file descriptor on ``path``, which is mode 0600 before a byte is written to it."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        # O_CREAT's mode counts only for a new file; an old one keeps its own
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
