import gzip
import json

import pytest

from helpers import shared
from plmrec.data.amazon import item_text, load_items, load_reviews, load_reviews_with_items
from plmrec.errors import DataLoadError


@pytest.mark.realdata
def test_amazon_2018_counts():
    d = shared("amazon2018")
    r = load_reviews(d / "Magazine_Subscriptions_5.json.gz", chunk_lines=500)  # several chunks
    assert (len(r), r["user_id"].nunique(), r["item_id"].nunique()) == (2375, 348, 157)
    items = load_items(d / "meta_Magazine_Subscriptions.json.gz")
    assert len(items) == 2320 and items["item_id"].is_unique
    assert not items["title"].str.contains("<span").any()  # HTML stripped
    joined = load_reviews_with_items(d / "Magazine_Subscriptions_5.json.gz", d / "meta_Magazine_Subscriptions.json.gz")
    assert joined.loc[joined["has_item_meta"], "item_id"].nunique() == 151
    for name, n in [("All_Beauty_5.json.gz", 5269), ("AMAZON_FASHION_5.json.gz", 3176)]:
        assert len(load_reviews(d / name)) == n


def _jsonl_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def test_amazon_2023_schema_joined_on_parent_asin(tmp_path):
    reviews = _jsonl_gz(
        tmp_path / "All_Beauty.jsonl.gz",
        [
            {
                "rating": 5.0,
                "title": "Lovely",
                "text": "Smells great &amp; lasts<br />long",
                "asin": "B01V1",
                "parent_asin": "B01P",
                "user_id": "U1",
                "timestamp": 1588687728923,
                "helpful_vote": 0,
                "verified_purchase": True,
            },
            {
                "rating": 2.0,
                "title": "Meh",
                "text": "Too small",
                "asin": "B02",
                "parent_asin": "B02P",
                "user_id": "U2",
                "timestamp": 1588687728000,
            },
        ],
    )
    meta = _jsonl_gz(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            {
                "parent_asin": "B01P",
                "title": "Rose Soap",
                "features": ["handmade", "vegan"],
                "description": ["A soap."],
                "categories": ["Beauty"],
                "main_category": "All Beauty",
            }
        ],
    )
    r = load_reviews(reviews)
    assert r.loc[0, "item_id"] == "B01P" and r.loc[0, "review_text"] == "Smells great & lasts long"
    assert str(r.loc[0, "timestamp"]).startswith("2020-05-05")
    j = load_reviews_with_items(reviews, meta)
    assert j.loc[0, "item_text"] == "Rose Soap. handmade vegan. A soap." and j.loc[1, "item_text"] == ""
    assert list(j["has_item_meta"]) == [True, False]
    assert list(item_text(load_items(meta))) == ["Rose Soap. handmade vegan. A soap."]


def test_malformed_line_named(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"rating": 5, "parent_asin": "A", "user_id": "u"}\n{"rating": 4,\n')
    with pytest.raises(DataLoadError, match=r"r.jsonl: line 2 is not valid JSON"):
        load_reviews(p)


def test_unknown_schema(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"stars": 5}\n')
    with pytest.raises(DataLoadError, match="unrecognised review record"):
        load_reviews(p)


def test_truncated_gzip(tmp_path):
    good = _jsonl_gz(
        tmp_path / "g.jsonl.gz", [{"rating": 1, "parent_asin": "A", "user_id": "u", "timestamp": 1}] * 2000
    )
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataLoadError, match="truncated or corrupt gzip"):
        load_reviews(bad)
