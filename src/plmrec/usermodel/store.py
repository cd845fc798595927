"""A trained user model as one file, and the dense scores other models read from it.

The file holds the spec, the weights (the item text and id vocabulary are buffers, so nothing else is
needed to rebuild it) and the item codes its rows stand for. `item_scores` gives, for each user,
max_c cos(u_c, v_j) over every item and which c attained it: the recommender row, the learning-to-rank
features and the served path all read these.

train-user-model's folder (`save_chosen` writes it, `SavedUserModels` and the bundle read it):

    seeds/<seed>/valid.pt   the chosen variant fitted on the training windows (scores the valid window)
    seeds/<seed>/refit.pt   the same refitted on train + valid (scores the test window)
    user_model.pt           the best seed's refit, with user_model.json (variant, spec, figures)
    user_vectors.parquet    every customer's C vectors from all purchases
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plmrec.errors import BundleError
from plmrec.usermodel.model import UserModel, UserModelSpec


def save(model: UserModel, path: str | Path, *, codes: list[str], **extra) -> Path:
    """`model` with its spec and the item codes of its rows (plus any JSON-able `extra`) in `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"spec": model.spec.to_dict(), "state": state, "codes": list(codes), **extra}, path)
    return path


def load(path: str | Path) -> tuple[UserModel, dict]:
    """(the model in eval mode on the CPU, the file's other entries: codes and extras)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no saved user model")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved.pop("state")
    spec = UserModelSpec(**saved.pop("spec"))
    text = state.get("items.text")
    model = UserModel(
        spec,
        item_text=text.numpy() if text is not None else None,
        item_ids=state["items.id_of"].numpy(),
        item_categories=state["items.category_of"].numpy() if "items.category_of" in state else None,
    )
    model.load_state_dict(state)
    model.eval()
    return model, saved


def item_scores(users: np.ndarray, items: np.ndarray, *, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Users (U, C, w) and items (N, w), both normalised -> (max_c cos (U, N) float32, the c that
    attains it (U, N) int64; ties go to the lower c)."""
    u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32))
    v = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    best, which = [], []
    for start in range(0, len(u), chunk):
        s = torch.einsum("ucw,nw->ucn", u[start : start + chunk].double(), v.double()).float()  # batch-independent
        top = s.max(dim=1)
        best.append(top.values.numpy())
        which.append(top.indices.numpy())
    if not best:
        return np.zeros((0, len(v)), dtype=np.float32), np.zeros((0, len(v)), dtype=np.int64)
    return np.concatenate(best), np.concatenate(which).astype(np.int64)


class SavedUserModels:
    """The per-seed models train-user-model saved (`<dir>/seeds/<seed>/{valid,refit}.pt`), scoring the
    customers of compare-models' windows: the valid window with the model fitted before it, the test
    window with the one refitted on train + valid; each from the customer's purchases before the window."""

    FILES = {"valid": "valid.pt", "test": "refit.pt"}

    def __init__(self, directory: str | Path, prepared, codes: list[str], *, split_params):
        from plmrec.data.prepare import _cutoffs

        self.directory = Path(directory)
        found = sorted(self.directory.glob("seeds/*/refit.pt"))
        if not found:
            raise BundleError(
                f"{self.directory}: no per-seed user models (seeds/<seed>/refit.pt); run train-user-model "
                f"with user_model.enabled: true, or leave the user model out"
            )
        self.seeds = sorted(int(p.parent.name) for p in found)
        self.codes = list(codes)
        self.prepared = prepared
        self.cutoffs = dict(zip(("valid", "test"), _cutoffs(split_params)))
        self._loaded: dict[tuple[int, str], UserModel] = {}
        self._items: dict[tuple[int, str], np.ndarray] = {}  # each model's item vectors, encoded once
        self._sequences: dict[tuple, dict] = {}  # per split and sequence shape: the same for every seed

    def seed_for(self, seed: int) -> int:
        """The user-model seed that scores a comparison seed: its own when saved, else the first."""
        return seed if seed in self.seeds else self.seeds[0]

    def model(self, seed: int, split: str) -> UserModel:
        key = (self.seed_for(seed), split)
        if key not in self._loaded:
            path = self.directory / "seeds" / str(key[0]) / self.FILES[split]
            model, saved = load(path)
            if saved["codes"] != self.codes:
                raise BundleError(
                    f"{path}: its {len(saved['codes']):,} item rows are not the {len(self.codes):,} items of the "
                    f"encoder's item table; train the user model on the same models/encoder"
                )
            self._loaded[key] = model
        return self._loaded[key]

    def item_vectors(self, seed: int, split: str) -> np.ndarray:
        """The item vectors of the model that scores `split` (encoded once per model)."""
        from plmrec.usermodel.retrieval import encode_items

        key = (self.seed_for(seed), split)
        if key not in self._items:
            self._items[key] = encode_items(self.model(seed, split))
        return self._items[key]

    def scores(self, split: str, customers, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(max_c cos, winning c) for `customers` (rows) over every item, from purchases before `split`."""
        from plmrec.usermodel.retrieval import customer_vectors

        model = self.model(seed, split)
        _, users = customer_vectors(model, self._sequences_before(split, model), customers)
        return item_scores(users, self.item_vectors(seed, split))

    def basket_scores(self, split: str, baskets: list[np.ndarray], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(max_c cos, winning c) for new customers from their first basket alone (item rows, all bought
        the day the window scores them from, as the server reads a basket)."""
        from plmrec.usermodel.retrieval import encode_users
        from plmrec.usermodel.sequences import time_bucket

        model = self.model(seed, split)
        sequences = [np.asarray(b, dtype=np.int64) for b in baskets]
        times = [time_bucket(np.zeros(len(b)), model.spec.time_buckets) for b in sequences]  # 0 days before
        return item_scores(encode_users(model, sequences, times), self.item_vectors(seed, split))

    def _sequences_before(self, split: str, model: UserModel) -> dict:
        """Each customer's sequence before `split`'s window, shaped for `model` (computed once)."""
        from plmrec.data.prepare import split_mode_of, window_rows
        from plmrec.usermodel.retrieval import customer_sequences
        from plmrec.usermodel.sequences import with_item_rows

        key = (split, model.spec.max_length, model.spec.time_buckets)
        if key not in self._sequences:
            past, _ = window_rows(self.prepared, split)
            rows = with_item_rows(past, {c: i for i, c in enumerate(self.codes)})
            cutoff = self.cutoffs[split]
            if split_mode_of(self.prepared) == "leave_one_out":  # the window is each user's next interaction
                cutoff = past["InvoiceDate"].max() + pd.Timedelta(seconds=1)
            self._sequences[key] = customer_sequences(model, rows, cutoff=cutoff)
        return self._sequences[key]


def save_chosen(runs: list[dict], data, out: str | Path, *, select: str) -> dict:
    """The chosen variant's runs (plmrec.usermodel.variants.train_variant, one per seed) as the folder
    above; `data`: the WindowData they were trained on; the best seed by valid `select`."""
    from plmrec.usermodel.retrieval import customer_sequences, customer_vectors

    out = Path(out)
    best = max(runs, key=lambda r: r["valid"][select])
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        seed_dir = out / "seeds" / str(run["seed"])
        facts = {"variant": run["variant"], "seed": run["seed"], "valid": run["valid"], "test": run["test"]}
        save(run["fit_model"], seed_dir / "valid.pt", codes=data.codes, window="train", **facts)
        save(run["model"], seed_dir / "refit.pt", codes=data.codes, window="train+valid", **facts)
    model = best["model"]
    save(model, out / "user_model.pt", codes=data.codes, variant=best["variant"], seed=best["seed"])
    facts = {
        "variant": best["variant"],
        "seed": best["seed"],
        "seeds": [r["seed"] for r in runs],
        "spec": model.spec.to_dict(),
        "items": data.codes,
        "valid": best["valid"],
        "test": best["test"],
    }
    (out / "user_model.json").write_text(json.dumps(facts, indent=2, default=str), encoding="utf-8")
    start = time.perf_counter()
    customers, vectors = customer_vectors(model, customer_sequences(model, data.rows, cutoff=data.end))
    seconds = time.perf_counter() - start
    pd.DataFrame({"CustomerID": customers, "vectors": [v.astype(np.float32).ravel() for v in vectors]}).to_parquet(
        out / "user_vectors.parquet", index=False
    )
    return {"customers": len(customers), "user_vectors_seconds": round(seconds, 2), "vectors": int(vectors.shape[1])}
