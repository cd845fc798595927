"""Checks and digests of input files, shared by the loaders, the download code and the stages."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

from plmrec.errors import DataLoadError


TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".inter", ".item")
SNIFF_BYTES = 1 << 16


def missing(path: Path) -> str:
    """Why `path` cannot be read although it was named: not there, a symlink loop, or a dangling link."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "a symbolic link loop (the link leads back to itself); point it at the data file"
        except OSError:
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return "file not found"


def require_data_file(path: str | Path) -> Path:
    """The path, if it names a non-empty file of the content its name says; else a DataLoadError that
    says which problem (not there, a symlink loop, empty, binary bytes in a text file)."""
    path = Path(path)
    if not path.exists():
        raise DataLoadError(f"{path}: {missing(path)}")
    if path.stat().st_size == 0:
        raise DataLoadError(f"{path}: file is empty (0 bytes)")
    sniff_text(path)
    return path


def sniff_text(path: Path) -> None:
    """A text file's first 64 KiB (after gunzip) must hold no NUL byte: a binary file or a corrupt export
    is refused before it is read in full."""
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith(TEXT_SUFFIXES):
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise DataLoadError(f"{path}: cannot be read: {exc}") from None
    at = head.find(b"\0")
    if at >= 0:
        raise DataLoadError(
            f"{path}: binary content in a text file (a NUL byte at byte {at}); it is not the {name.rsplit('.', 1)[-1]} "
            "file its name says (a corrupt or truncated export?)"
        )


def require_size(path: str | Path, max_mb: float) -> None:
    """The file (or a folder's files together) within `data.max_file_mb`, checked before anything is read."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files if p.exists())
    if size > max_mb * 1e6:
        raise DataLoadError(
            f"{path}: {size / 1e6:,.0f} MB, over data.max_file_mb ({max_mb:,.0f} MB); a larger shop raises it "
            f"(-S data.max_file_mb=...), after checking the file is what it should be"
        )


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (sha256 for downloads, md5 as DVC uses)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
