"""The download code's checks, on local files (the sources are not reachable offline)."""

import json
import zipfile

import pytest

from plmrec.data.download import (
    SOURCES,
    amazon_2023_urls,
    expected_checksum,
    extract_member,
    record_checksum,
    sha256_file,
    verify_checksum,
)
from plmrec.data.online_retail import load_transactions
from plmrec.errors import DataLoadError


def test_sources_point_at_public_urls():
    assert SOURCES["online-retail"].url.startswith("https://archive.ics.uci.edu/")
    assert SOURCES["online-retail"].member == "Online Retail.xlsx"
    urls = amazon_2023_urls("All_Beauty")
    assert urls["reviews"].endswith("/review_categories/All_Beauty.jsonl.gz")
    assert urls["meta"].endswith("/meta_categories/meta_All_Beauty.jsonl.gz")


def test_checksum_verified(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    digest = sha256_file(f)
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    verify_checksum(f, digest.upper())
    with pytest.raises(DataLoadError, match="sha256 mismatch"):
        verify_checksum(f, "0" * 64)


def test_first_download_checksum_recorded_then_enforced(tmp_path):
    src = SOURCES["online-retail"]
    assert expected_checksum(src, tmp_path, None) is None
    record_checksum(tmp_path, src.filename, "ab" * 32)
    assert expected_checksum(src, tmp_path, None) == "ab" * 32
    assert expected_checksum(src, tmp_path, "cd" * 32) == "cd" * 32  # an explicit --sha256 wins
    assert json.loads((tmp_path / "checksums.json").read_text()) == {src.filename: "ab" * 32}


def test_archive_extracted_and_parsed(small_raw, tmp_path):
    xlsx = tmp_path / "Online Retail.xlsx"
    small_raw.head(50).to_excel(xlsx, index=False)
    archive = tmp_path / "online_retail.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(xlsx, "Online Retail.xlsx")
    out = extract_member(archive, "Online Retail.xlsx", tmp_path / "x")
    assert len(load_transactions(out)) == 50
    with pytest.raises(DataLoadError, match="has no 'missing.xlsx'"):
        extract_member(archive, "missing.xlsx", tmp_path / "y")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DataLoadError, match="not a valid zip archive"):
        extract_member(broken, "Online Retail.xlsx", tmp_path / "z")
