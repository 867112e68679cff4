"""Artifact storage: directories published atomically and verified by checksum when read.

A directory is built under a temporary name next to its destination and renamed into place in one step, so a
reader (or a crash) never sees half of it. Its `manifest.json` lists the sha256 of every other file."""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


class ChecksumMismatch(Exception):
    pass


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` except the manifest, by relative POSIX path."""
    return {
        p.relative_to(directory).as_posix(): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST
    }


def staging_dir(parent: Path, label: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{TMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def publish(staging: Path, destination: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest (with the files' checksums) into `staging`, fsync, and rename it to `destination`.
    Refuses to replace an existing destination: published directories are immutable."""
    manifest = {**manifest, "files": checksums(staging)}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    with (staging / MANIFEST).open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; published artifacts are never replaced")
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, destination)
    fd = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return manifest


def manifest_sha256(directory: Path) -> str:
    return file_sha256(directory / MANIFEST)


def verify(directory: Path, expected_manifest_sha256: str | None = None) -> dict[str, Any]:
    """Check the manifest's own hash (when the registry knows it) and every file's; return the manifest."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ChecksumMismatch(f"{directory}: no {MANIFEST}")
    if expected_manifest_sha256 is not None and file_sha256(path) != expected_manifest_sha256:
        raise ChecksumMismatch(f"{path}: sha256 differs from the registry's")
    manifest: dict[str, Any] = json.loads(path.read_text())
    actual = checksums(directory)
    expected = manifest.get("files", {})
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            what = "missing" if name not in actual else "unexpected" if name not in expected else "sha256 differs"
            raise ChecksumMismatch(f"{directory / name}: {what}")
    return manifest


def remove_stale_staging(parent: Path, label_prefix: str) -> int:
    """Remove leftover staging directories whose label starts with `label_prefix` (a crashed run's); returns how
    many. The caller decides which labels are dead: a live run's staging directory must be left alone."""
    if not parent.is_dir():
        return 0
    removed = 0
    for path in parent.iterdir():
        if path.name.startswith(TMP_PREFIX + label_prefix) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
