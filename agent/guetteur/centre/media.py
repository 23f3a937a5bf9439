"""The centre's media tree: snapshots and clips as files named by their content.

``{root}/objects/ab/cd/abcdef….{ext}`` where ``abcdef…`` is the file's sha256: a file cannot be
swapped for another without its name (and the sha256 the database holds) giving it away, the same
bytes stored twice are one file, and several servers may write into one shared tree without
coordination (a write is a temporary file, fsync, rename). The database rows (``snapshots``,
``clips``) hold the sha256 and the path; ``release`` deletes a file once no row refers to it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

_EXT = {"image/jpeg": "jpg", "video/mp4": "mp4"}


class MediaStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:4] / f"{sha256}.{ext}"

    def put(self, data: bytes, ext: str) -> tuple[str, Path]:
        """Store ``data``; returns (sha256, path). Idempotent."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, ext)
        if not path.exists():
            write_atomic(path, [data])
        return sha, path

    def put_parts(self, parts: Iterable[bytes], ext: str, expected_sha256: str) -> Path | None:
        """Store the concatenation of ``parts`` if its sha256 is ``expected_sha256``; returns
        the path, or None (nothing written) when the content does not match."""
        path = self.path_for(expected_sha256, ext)
        if path.exists():
            return path
        digest = hashlib.sha256()

        def hashed() -> Iterable[bytes]:
            for part in parts:
                digest.update(part)
                yield part

        tmp = write_atomic(path, hashed(), commit=False)
        if digest.hexdigest() != expected_sha256:
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, path)
        return path

    def contains(self, sha256: str, ext: str) -> bool:
        return self.path_for(sha256, ext).exists()

    def release(self, sha256: str, ext: str) -> bool:
        """Delete the file of ``sha256`` (the caller checked that no row refers to it)."""
        try:
            self.path_for(sha256, ext).unlink()
            return True
        except FileNotFoundError:
            return False


def extension(content_type: str | None, default: str) -> str:
    return _EXT.get((content_type or "").lower(), default)


def write_atomic(path: Path, parts: Iterable[bytes], commit: bool = True) -> Path:
    """Write ``parts`` to a temporary file beside ``path`` and fsync it; rename it to ``path``
    when ``commit`` (else return the temporary file for the caller to rename or delete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if commit:
        os.replace(tmp, path)
        return path
    return tmp
