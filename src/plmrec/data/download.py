"""Download public datasets with a sha256 check (needs network; nothing here runs at import)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from plmrec.data.files import file_digest
from plmrec.errors import DataLoadError


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    filename: str
    sha256: str | None  # None: recorded on first download, then enforced (see `checksums.json`)
    member: str | None = None  # file to extract from a zip archive
    homepage: str = ""


SOURCES = {
    "online-retail": Source(
        name="online-retail",
        url="https://archive.ics.uci.edu/static/public/352/online+retail.zip",
        filename="online_retail.zip",
        sha256=None,
        member="Online Retail.xlsx",
        homepage="https://archive.ics.uci.edu/dataset/352/online+retail",
    ),
    "online-retail-ii": Source(
        name="online-retail-ii",
        url="https://archive.ics.uci.edu/static/public/502/online+retail+ii.zip",
        filename="online_retail_ii.zip",
        sha256=None,
        member="online_retail_II.xlsx",
        homepage="https://archive.ics.uci.edu/dataset/502/online+retail+ii",
    ),
}

AMAZON_2023_BASE = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw"


def amazon_2023_urls(category: str) -> dict[str, str]:
    """Review and metadata URLs of one Amazon Reviews 2023 category (e.g. 'All_Beauty')."""
    return {
        "reviews": f"{AMAZON_2023_BASE}/review_categories/{category}.jsonl.gz",
        "meta": f"{AMAZON_2023_BASE}/meta_categories/meta_{category}.jsonl.gz",
    }


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def verify_checksum(path: str | Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataLoadError(f"{path}: sha256 mismatch: expected {expected}, got {actual}; "
                            f"the download is corrupt or the source changed")


def _lock_file(dest: Path) -> Path:
    return dest / "checksums.json"


def expected_checksum(source: Source, dest: Path, override: str | None) -> str | None:
    if override:
        return override
    if source.sha256:
        return source.sha256
    lock = _lock_file(dest)
    if lock.exists():
        return json.loads(lock.read_text()).get(source.filename)
    return None


def record_checksum(dest: Path, filename: str, digest: str) -> None:
    lock = _lock_file(dest)
    known = json.loads(lock.read_text()) if lock.exists() else {}
    known[filename] = digest
    lock.write_text(json.dumps(known, indent=2, sort_keys=True))


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if member not in names:
                raise DataLoadError(f"{archive}: has no '{member}' (members: {', '.join(names)})")
            zf.extract(member, dest)
    except zipfile.BadZipFile as exc:
        raise DataLoadError(f"{archive}: not a valid zip archive: {exc}") from None
    return dest / member


def download(name: str, dest: str | Path, sha256: str | None = None, *, timeout: float = 60.0) -> Path:
    """Fetch a known dataset into `dest`, verify it, and return the path of the data file."""
    import requests
    from tqdm import tqdm

    if name not in SOURCES:
        raise DataLoadError(f"unknown dataset '{name}'; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / source.filename
    expected = expected_checksum(source, dest, sha256)
    if not target.exists():
        part = target.with_suffix(target.suffix + ".part")
        try:
            with requests.get(source.url, stream=True, timeout=timeout) as resp:
                resp.raise_for_status()
                total = int(resp.headers.get("content-length", 0)) or None
                with open(part, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, desc=source.filename) as bar:
                    for block in resp.iter_content(1 << 20):
                        fh.write(block)
                        bar.update(len(block))
        except requests.RequestException as exc:
            part.unlink(missing_ok=True)
            raise DataLoadError(f"download of {source.url} failed: {exc} (source page: {source.homepage})") from None
        part.replace(target)
    if expected:
        verify_checksum(target, expected)
    else:
        record_checksum(dest, source.filename, sha256_file(target))
    return extract_member(target, source.member, dest) if source.member else target
