"""The update inbox, read by the root helper without trusting anything the agent can change.

The inbox (``/var/lib/guetteur/updates/inbox``) is writable by the unprivileged agent, so a
compromised agent controls it: it can plant a symlink for a bundle (the helper would read a file
it chose), turn ``done/`` into a symlink (the helper would write where it chose), or swap a
bundle between the checks and the install. So the helper never follows a symlink there: every
directory is opened component by component with ``O_NOFOLLOW``, every file by name relative to
its directory's descriptor (``dir_fd``) with ``O_NOFOLLOW``, and a bundle is copied from its open
descriptor into a directory only root can write before anything verifies it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guetteur.errors import GuetteurError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InboxError(GuetteurError):
    """The inbox, or a file in it, is not what it must be (a symlink, not a regular file...)."""


def open_dir(path: Path, create: bool = False) -> int:
    """A descriptor of directory ``path`` reached without following any symlink on the way
    (each component opened with O_NOFOLLOW relative to the previous one)."""
    fd = os.open("/" if path.is_absolute() else ".", DIR_FLAGS)
    try:
        for part in path.parts[1:] if path.is_absolute() else path.parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise InboxError(
                    "update.inbox",
                    f"{path}: {part} is not a plain directory (a symlink?): {exc.strerror}",
                ) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_child_dir(parent_fd: int, name: str) -> int:
    """Directory ``name`` under ``parent_fd``, created if missing, never through a symlink."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise InboxError(
            "update.inbox", f"{name}/ is not a plain directory (a symlink?): {exc.strerror}"
        ) from None


@contextmanager
def opened_dir(path: Path, create: bool = False) -> Iterator[int]:
    fd = open_dir(path, create)
    try:
        yield fd
    finally:
        os.close(fd)


def bundle_names(dir_fd: int) -> list[str]:
    return sorted(n for n in os.listdir(dir_fd) if n.endswith(".gtb") and not n.startswith("."))


def read_small(dir_fd: int, name: str, limit: int = 64 * 1024) -> bytes | None:
    """A small regular file's bytes (a downgrade permit), or None if absent; never a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InboxError("update.inbox", f"{name}: not a plain file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InboxError("update.inbox", f"{name}: not a regular file")
        return f.read(limit)


def take_bundle(dir_fd: int, name: str, workdir: Path) -> Path:
    """Copy bundle ``name`` from its open descriptor into ``workdir`` (root's own): what is
    verified and installed is that copy, whatever happens in the inbox meanwhile."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise InboxError(
            "update.inbox", f"{name}: refused, not a plain file (a symlink?): {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InboxError("update.inbox", f"{name}: refused, not a regular file")
        target = workdir / "bundle.gtb"
        with open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def file_away(inbox_fd: int, done_fd: int, name: str, stem: str, result: dict[str, Any]) -> None:
    """Move ``name`` out of the inbox into done/ as ``{stem}.gtb`` and write ``{stem}.json``
    (created under a fresh name, then renamed: nothing planted in done/ is ever written through)."""
    try:
        os.rename(name, f"{stem}.gtb", src_dir_fd=inbox_fd, dst_dir_fd=done_fd)
    except FileNotFoundError:
        pass  # gone meanwhile: nothing to move
    tmp = f".{stem}.json.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=done_fd)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=done_fd)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.rename(tmp, f"{stem}.json", src_dir_fd=done_fd, dst_dir_fd=done_fd)
