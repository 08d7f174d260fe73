"""Content-addressed artifact store: every file kept once, by its sha256, verified on load."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from modelhost.errors import ArtifactIntegrityError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Blobs under ``root/blobs/ab/abcdef…``; versions materialised under ``root/versions``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._versions = root / "versions"

    def _blob(self, digest: str) -> Path:
        return self._blobs / digest[:2] / digest

    def put_dir(self, directory: Path) -> dict[str, str]:
        """Store every file below ``directory``; return relative path → sha256."""
        files: dict[str, str] = {}
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            if rel.startswith((".", "__pycache__")) or "/__pycache__/" in rel:
                continue
            files[rel] = self.put_file(path)
        return files

    def put_file(self, path: Path) -> str:
        """Store one file; return its sha256. A blob already stored is not copied again."""
        digest = sha256_file(path)
        blob = self._blob(digest)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, blob)
        return digest

    def size(self, files: dict[str, str]) -> int:
        """Total bytes of a version's files."""
        return sum(self._blob(d).stat().st_size for d in files.values() if self._blob(d).exists())

    def materialize(self, name: str, version: str, files: dict[str, str]) -> Path:
        """Verify every blob against its sha256 and lay the version out as a directory.

        Raises:
            ArtifactIntegrityError: a blob is missing or its content changed since the push.
        """
        target = self._versions / name / version
        for rel, digest in files.items():
            blob = self._blob(digest)
            if not blob.is_file():
                raise ArtifactIntegrityError(f"{name}@{version}: artifact {rel} ({digest}) is gone")
            actual = sha256_file(blob)
            if actual != digest:
                raise ArtifactIntegrityError(
                    f"{name}@{version}: artifact {rel} fails its check: sha256 {actual} "
                    f"!= {digest} recorded at push; push the version again"
                )
            dest = target / rel
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dest)
            except OSError:
                shutil.copyfile(blob, dest)
        return target
