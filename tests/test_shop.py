"""Any shop's data: each adapter reads a real slice into the canonical tables, the counts the data sets'
README gives come out, and bad input is a clear error or a counted drop."""

import gzip
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from helpers import SHARED_DATA, SMALL, magazine_as_recbole, retail_orders
from plmrec.config import Params, SyntheticParams, parse_params
from plmrec.data import adapters
from plmrec.data.inspect import report
from plmrec.data.shop import finish, item_sentence, leave_one_out
from plmrec.errors import DataLoadError

MAGAZINE = SHARED_DATA / "amazon2018" / "Magazine_Subscriptions_5.json.gz"
MAGAZINE_META = SHARED_DATA / "amazon2018" / "meta_Magazine_Subscriptions.json.gz"
SCIENTIFIC = SHARED_DATA / "amazon-seqrec" / "scientific"
realdata = pytest.mark.realdata


def _params(**data) -> Params:
    return parse_params({"data": data})


def test_the_synthetic_default_reads_as_online_retail_with_its_cleaning():
    params = Params()
    params.data.synthetic = SyntheticParams(**SMALL)
    shop = adapters.read_shop(params)
    assert shop.adapter == "online_retail" and shop.sources == ["synthetic"]
    assert shop.dropped["clean_missing_customer"] > 0  # today's cleaning, each reason counted
    assert {"quantity", "price", "basket", "country"} <= set(shop.interactions.columns)
    assert shop.interactions["user"].map(type).eq(str).all()  # ids are strings end to end
    assert (shop.items["text"].str.len() > 0).all()
    found = report(shop, params)
    assert found["split"]["mode"].startswith("temporal")
    assert all(found["split"]["interactions"][s] > 0 for s in ("train", "valid", "test"))
    assert all(p["runs"] for p in found["pipeline"] if "review" not in p["part"] and "rating" not in p["part"])


@realdata
def test_amazon_reviews_with_metadata(tmp_path):
    shop = adapters.read_shop(_params(source="file", path=str(MAGAZINE), meta_path=str(MAGAZINE_META)))
    assert shop.adapter == "amazon" and adapters.detect_format(MAGAZINE) == "amazon"
    # 2,375 reviews of 157 items; 151 of them have metadata: the others' reviews are dropped, counted
    kept = len(shop.interactions)
    assert kept + shop.dropped["interaction_item_not_in_catalogue"] + shop.dropped["duplicate_interaction"] == 2375
    assert shop.interactions["item"].nunique() == 151 and shop.has("rating")
    assert len(shop.reviews) + shop.dropped["review_item_not_in_catalogue"] == 2375
    assert shop.dropped["duplicate_item"] == 3385 - 2320  # the raw metadata repeats items
    text = shop.items.set_index("item")["text"]
    assert (text.loc[shop.interactions["item"].unique()].str.len() > 0).mean() > 0.9
    parts = {p["part"]: p["runs"] for p in report(shop, Params())["pipeline"]}
    assert parts["review/item fine-tuning pairs and product search (evaluate-search)"]
    assert not parts["quantity-label XGBoost (train-baseline, evaluate-baseline, the classifier ablation)"]


@realdata
def test_recbole_atomic_files_written_from_a_real_slice(tmp_path):
    """Magazine Subscriptions as RecBole atomic files (the format of RecBole's public data sets) reads back
    as the same interactions the Amazon adapter gives."""
    magazine_as_recbole(tmp_path)
    assert adapters.detect_format(tmp_path) == "recbole"
    shop = adapters.read_shop(_params(source="file", path=str(tmp_path)))
    amazon = adapters.read_shop(_params(source="file", path=str(MAGAZINE), meta_path=str(MAGAZINE_META)))
    assert shop.adapter == "recbole" and len(shop.interactions) == len(amazon.interactions)
    columns = ["user", "item", "time", "rating", "position"]
    pd.testing.assert_frame_equal(shop.interactions[columns], amazon.interactions[columns])
    assert set(shop.interactions["user"]) == set(amazon.interactions["user"])


@realdata
def test_the_unisrec_benchmark_keeps_its_own_leave_one_out_split():
    shop = adapters.read_shop(_params(source="file", path=str(SCIENTIFIC)))
    assert shop.adapter == "unisrec"
    facts = shop.facts()
    assert facts["users"] == 8442 and facts["items"] == 4385
    split = shop.interactions["split"]
    assert (split == "test").sum() == (split == "valid").sum() == 8442
    found = report(shop, Params())
    assert found["split"]["mode"].startswith("leave-one-out")
    again, short = leave_one_out(shop.interactions)  # RecBole's rule gives the benchmark's split back
    assert short == 0 and (again == split).all()


@realdata
def test_a_plain_csv_with_a_column_map(tmp_path):
    table = retail_orders(20_000)
    path = tmp_path / "orders.csv"
    table.to_csv(path, index=False)
    params = _params(
        source="file",
        path=str(path),
        columns={
            "user": "customer_id",
            "item": "sku",
            "time": "ordered_at",
            "quantity": "qty",
            "title": "product_name",
        },
    )
    assert adapters.detect_format(path) == "table"
    shop = adapters.read_shop(params)
    assert shop.adapter == "table" and len(shop.interactions) == len(table)
    assert shop.interactions["user"].iloc[0] == str(int(table.sort_values("customer_id")["customer_id"].iloc[0]))
    assert shop.has("quantity") and not shop.has("basket")
    assert shop.items.set_index("item").loc[table["sku"].iloc[0], "text"] == table["product_name"].iloc[0].strip()

    params.data.columns = {"user": "customer", "item": "sku"}  # a mapped column the file does not have
    with pytest.raises(DataLoadError, match=r"data.columns.user is 'customer', which the file does not have"):
        adapters.read_shop(params)


def test_ids_of_mixed_types_are_refused_and_drops_are_counted():
    items = pd.DataFrame({"item": ["a", "b", "b", "c"], "title": ["A", "B", "B again", "C"]})
    items["text"] = item_sentence(items, "{title}")
    interactions = pd.DataFrame({"user": ["u1", "u1", "u2", None], "item": ["a", "z", "b", "c"]})
    reviews = pd.DataFrame(
        {"user": ["u1"], "item": ["z"], "time": [None], "rating": [5.0], "title": [""], "text": [""]}
    )
    shop = finish(interactions, items, reviews=reviews, adapter="test", sources=[])
    assert shop.dropped == {
        "duplicate_item": 1,
        "interaction_without_user_or_item": 1,
        "interaction_item_not_in_catalogue": 1,
        "review_item_not_in_catalogue": 1,
    }
    assert shop.items.set_index("item").loc["b", "title"] == "B"  # the first of a duplicate id is kept
    mixed = pd.DataFrame({"user": [12346, "C-12346"], "item": ["a", "a"]})
    with pytest.raises(DataLoadError, match=r"interactions: column 'user' mixes id types"):
        finish(mixed, items, adapter="test", sources=[])


def test_a_leave_one_out_user_with_too_few_interactions_is_counted():
    inter = pd.DataFrame({"user": ["a"] * 4 + ["b"], "item": list("wxyzw"), "position": [0, 1, 2, 3, 0]})
    split, short = leave_one_out(inter)
    assert split.tolist() == ["train", "train", "valid", "test", None] and short == 1


def test_the_item_template_leaves_out_what_an_item_lacks():
    items = pd.DataFrame({"item": ["1", "2"], "title": ["Red mug", None], "brand": ["Acme", "Acme"]})
    assert item_sentence(items, "{title}. By {brand}").tolist() == ["Red mug. By Acme", "Acme"]
    ended = pd.DataFrame({"item": ["1"], "title": ["Vogue."], "description": ["Fashion"]})
    assert item_sentence(ended, "{title}. {description}").tolist() == ["Vogue. Fashion"]  # one full stop
    with pytest.raises(DataLoadError, match=r"names \['colour'\]"):
        item_sentence(items, "{title} in {colour}")


def test_a_table_without_a_user_column_asks_for_the_map(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"who": ["1"], "item_id": ["a"]}).to_csv(path, index=False)
    with pytest.raises(DataLoadError, match=r"which column is the user\? set data.columns.user"):
        adapters.read_shop(_params(source="file", path=str(path)))


def test_data_inspect_prints_the_adapter_counts_split_and_what_runs(tmp_path):
    from plmrec.cli import main

    lines = [
        json.dumps(
            {
                "reviewerID": f"u{i % 3}",
                "asin": f"i{i % 4}",
                "overall": 4.0,
                "unixReviewTime": 1_500_000_000 + i,
                "summary": "ok",
                "reviewText": "fine",
            }
        )
        for i in range(12)
    ]
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    res = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "adapter: amazon" in res.output and "users 3" in res.output and "split: leave-one-out" in res.output
    assert "skipped  quantity-label XGBoost" in res.output and "runs     review/item" in res.output
    res = CliRunner().invoke(main, ["data", "inspect", str(path), "--json"])
    assert json.loads(res.output)["counts"]["interactions"] == 12


@realdata
def test_amazon_reviews_become_the_stages_table_with_a_leave_one_out_split(tmp_path):
    """What ingest writes for a non-Online-Retail format, and what prepare makes of it: text ids kept,
    what the data lacks named, each user's last review test and the one before valid."""
    from plmrec.data.prepare import prepare_transactions, split_mode_of
    from plmrec.data.shop import to_transactions
    from plmrec.validation import validate_table

    params = _params(source="file", path=str(MAGAZINE), meta_path=str(MAGAZINE_META))
    shop = adapters.read_shop(params)
    table, meta = to_transactions(shop)
    assert meta["adapter"] == "amazon" and meta["absent"] == ["basket", "quantity", "price", "country"]
    assert meta["dropped"]["duplicate_interaction"] > 0  # Amazon's file repeats some reviews
    assert table["CustomerID"].map(type).eq(str).all() and (table["Quantity"] == 1).all()
    checked = validate_table(table, "raw", params, meta=meta, report_dir=tmp_path / "raw")
    assert checked.success and checked.dropped["interaction_item_not_in_catalogue"] == 64  # in the report too
    assert checked.dropped["review_item_not_in_catalogue"] == shop.dropped["review_item_not_in_catalogue"] > 0
    assert json.loads((tmp_path / "raw" / "summary.json").read_text())["dropped_duplicate_interaction"] > 0
    prepared, info = prepare_transactions(table, params.clean, params.split, adapter="amazon", absent=meta["absent"])
    assert info["split"]["mode"] == split_mode_of(prepared) == "leave_one_out"
    assert "quantity_labels" in info["skipped"] and (prepared["label"] == 0).all()
    per_user = prepared.groupby(["CustomerID", "split"]).size().unstack(fill_value=0)
    assert (per_user["test"] == 1).all() and (per_user["valid"] == 1).all()
    last = prepared.sort_values("position").groupby("CustomerID").tail(1)
    assert (last["split"] == "test").all()
    assert validate_table(prepared, "prepared", params, meta=info).success


@realdata
def test_the_unisrec_benchmark_prepares_to_its_own_split():
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.shop import to_transactions

    params = _params(source="file", path=str(SCIENTIFIC))
    table, meta = to_transactions(adapters.read_shop(params))
    assert "time" in meta["absent"] and table["InvoiceDate"].notna().all()  # positions as days
    prepared, info = prepare_transactions(table, params.clean, params.split, adapter="unisrec", absent=meta["absent"])
    assert info["cleaning"]["rows_out"] == len(table) == 59_427  # 34,101 training rows + 8,442 firsts + 2 x 8,442
    assert (prepared["split"] == "train").sum() - prepared["CustomerID"].nunique() == 34_101  # the files' train rows
    assert (prepared["split"] == prepared["benchmark_split"]).all()


def test_the_temporal_split_stays_the_online_retail_default(small_raw):
    from plmrec.data.prepare import prepare_transactions, split_mode, split_mode_of

    params = Params()
    assert split_mode(params.split, "online_retail") == "temporal"
    assert split_mode(params.split, "recbole") == "leave_one_out"
    prepared, info = prepare_transactions(small_raw, params.clean, params.split)
    assert split_mode_of(prepared) == "temporal" and info["split"]["train_end"] == "2011-09-01"
    assert prepared["CustomerID"].dtype == "int64"  # Online Retail's numbers stay numbers


def test_without_baskets_co_purchase_pairs_come_from_neighbouring_interactions():
    from plmrec.finetune import pairs

    rows = pd.DataFrame(
        {
            "CustomerID": ["u1"] * 3 + ["u2"] * 2,
            "position": [0, 1, 2, 0, 1],
            "InvoiceNo": ["u1@1", "u1@2", "u1@3", "u2@1", "u2@2"],  # one item per 'basket': no pairs
            "StockCode": ["a", "b", "c", "a", "c"],
            "Description": ["red mug", "blue mug", "green cup", "red mug", "green cup"],
            "InvoiceDate": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-01", "2020-01-02"]),
        }
    )
    assert pairs.item_context_pairs(rows) == []
    found = set(pairs.item_context_pairs(pairs.neighbour_baskets(rows)))
    assert ("red mug", "blue mug") in found and ("blue mug", "green cup") in found and ("red mug", "green cup") in found
    assert ("blue mug", "red mug") in found  # both ways, as co-purchases are
