"""The reserve file: disk space set aside for the gateway's databases, given back under pressure.

On a full data partition SQLite cannot commit (``database or disk is full``): undelivered events
could not be queued, acknowledgements not recorded, the ring's index not even record a deletion.
Retention keeps free space (``recording.headroom_bytes``), but between two passes a camera can
fill what is left. So ``{data_dir}/reserve.bin`` holds real blocks (``posix_fallocate``, not a
sparse file); whoever meets a full disk (the outbox store, the recorder at start-up) calls
``release``: the space is free at once and the write is retried. The recorder's retention pass
recreates the file (``ensure``) once the partition has room again.

Functions of the data directory, no state: the outbox and the recorder share the file without
knowing each other.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_NAME = "reserve.bin"


def reserve_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / RESERVE_NAME


def reserve_size(data_dir: Path | str) -> int:
    try:
        return reserve_path(data_dir).stat().st_size
    except OSError:
        return 0


def release(data_dir: Path | str, who: str) -> int:
    """Delete the reserve file; returns the bytes given back (0 when there was none)."""
    path = reserve_path(data_dir)
    size = reserve_size(data_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.error("disk full: cannot release the reserve %s for %s: %s", path, who, exc.strerror)
        return 0
    log.warning(
        "data partition of %s full: reserve of %.1f MB released so that %s can write; "
        "retention frees space and the reserve is recreated once there is room",
        data_dir,
        size / 1e6,
        who,
    )
    return size


def ensure(data_dir: Path | str, size: int, keep_free: int) -> bool:
    """Make sure the reserve file holds ``size`` bytes, if the partition then still has
    ``keep_free`` bytes free. True when the reserve is in place."""
    if size <= 0:
        return True
    have = reserve_size(data_dir)
    if have >= size:
        return True
    path = reserve_path(data_dir)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return False
    if free - (size - have) < keep_free:
        return False
    tmp = path.with_name(f".{RESERVE_NAME}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # real blocks: a sparse file would reserve nothing
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("cannot set aside the reserve %s (%.1f MB): %s", path, size / 1e6, exc)
        return False
    if have == 0:
        log.info("reserve of %.1f MB set aside for the databases in %s", size / 1e6, path)
    return True


def check_room(directory: Path, floor: int) -> None:
    """Raise ENOSPC when the partition of ``directory`` has less than ``floor`` bytes free.

    The recorder checks it before each segment and each GOP with a floor of a quarter of
    ``recording.headroom_bytes``: when retention cannot keep the headroom (something else fills
    the partition, or the outbox just released this reserve), recording waits rather than take
    the bytes an undelivered event needs. A quarter: the ring must still turn over (a new segment
    beside the newest one) in what the partition has left."""
    free = shutil.disk_usage(directory).free
    if free < floor:
        raise OSError(
            errno.ENOSPC, f"{free / 1e6:.1f} MB free, {floor / 1e6:.1f} MB kept for the databases"
        )
