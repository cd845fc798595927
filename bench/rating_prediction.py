"""Rating prediction from user and item vectors (the Sentence-T5 study's task; issue 41, item 2).

  python bench/rating_prediction.py --data ../shared/data/amazon2018/Magazine_Subscriptions_5.json.gz \\
      --meta ../shared/data/amazon2018/meta_Magazine_Subscriptions.json.gz --seeds 0 1 2 \\
      --out bench/results/rating_magazine.json

Reviews (Amazon 2018 or 2023) split in time: the oldest 80% train, the next 10% valid, the newest 10%
test. Text vectors come from the encoder (the offline MiniLM by default): an item's is its metadata text
(title, features, description) where there is one, else the mean of its training reviews; a user's is the
mean of the reviews they wrote in train (their history). A small regressor (scikit-learn's MLP) reads
[user, item, user * item, the item's and the user's mean training rating] (text vectors
projected on 16 or 64 principal axes, chosen on valid). Beside it, from the same code:
the global mean, the per-item mean (shrunk to the global mean by a count chosen on valid), a biased
matrix factorisation (PMF with biases, torch, size and weight decay chosen on valid), and the same
regressor on the MF's id-only vectors. Every setting is chosen on valid; test is scored once per seed.
A user or item unseen in train gets zero vectors and the global mean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402


def temporal_split(reviews: pd.DataFrame) -> pd.DataFrame:
    """train / valid / test: the oldest 80%, the next 10%, the newest 10% of the reviews (ties by order)."""
    out = reviews.dropna(subset=["rating", "timestamp"]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    n = len(out)
    out["split"] = np.where(np.arange(n) < 0.8 * n, "train", np.where(np.arange(n) < 0.9 * n, "valid", "test"))
    return out


def rmse_mae(y: np.ndarray, p: np.ndarray) -> dict:
    p = np.clip(p, 1.0, 5.0)
    return {"rmse": float(np.sqrt(np.mean((y - p) ** 2))), "mae": float(np.mean(np.abs(y - p)))}


def shrunk_means(train: pd.DataFrame, key: str, *, prior: float, strength: float) -> pd.Series:
    g = train.groupby(key)["rating"]
    return (g.sum() + strength * prior) / (g.count() + strength)


def biased_mf(train: pd.DataFrame, users: dict, items: dict, *, dim: int, weight_decay: float, seed: int):
    """PMF with user and item biases, fitted by full-batch Adam on the training ratings; returns a
    predictor and the (user, item) factor matrices."""
    import torch

    torch.manual_seed(seed)
    u = torch.as_tensor(train["user_id"].map(users).to_numpy())
    i = torch.as_tensor(train["item_id"].map(items).to_numpy())
    y = torch.as_tensor(train["rating"].to_numpy(), dtype=torch.float32)
    mu = float(y.mean())
    P = torch.nn.Parameter(0.01 * torch.randn(len(users), dim))
    Q = torch.nn.Parameter(0.01 * torch.randn(len(items), dim))
    bu = torch.nn.Parameter(torch.zeros(len(users)))
    bi = torch.nn.Parameter(torch.zeros(len(items)))
    opt = torch.optim.Adam([P, Q, bu, bi], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        pred = mu + bu[u] + bi[i] + (P[u] * Q[i]).sum(1)
        loss = ((pred - y) ** 2).mean() + weight_decay * (
            (P[u] ** 2).sum(1) + (Q[i] ** 2).sum(1) + bu[u] ** 2 + bi[i] ** 2
        ).mean()
        loss.backward()
        opt.step()
    P_, Q_, bu_, bi_ = (t.detach().numpy() for t in (P, Q, bu, bi))

    def predict(frame: pd.DataFrame) -> np.ndarray:
        ui = frame["user_id"].map(users).fillna(-1).astype(int).to_numpy()
        ii = frame["item_id"].map(items).fillna(-1).astype(int).to_numpy()
        out = np.full(len(frame), mu)
        ku, ki = ui >= 0, ii >= 0
        out[ku] += bu_[ui[ku]]
        out[ki] += bi_[ii[ki]]
        both = ku & ki
        out[both] += (P_[ui[both]] * Q_[ii[both]]).sum(1)
        return out

    return predict, P_, Q_


def vectors_for(frame: pd.DataFrame, key: str, table: dict, *, width: int) -> np.ndarray:
    """Each row's vector from `table` (id -> vector); zeros for an id not in it."""
    zero = np.zeros(width, dtype=np.float32)
    return np.stack([table.get(v, zero) for v in frame[key]])


def features(frame: pd.DataFrame, user_vec: dict, item_vec: dict, *, means: tuple, width: int) -> np.ndarray:
    user_mean, item_mean, prior = means
    u, i = vectors_for(frame, "user_id", user_vec, width=width), vectors_for(frame, "item_id", item_vec, width=width)
    um = frame["user_id"].map(user_mean).fillna(prior).to_numpy()[:, None]
    im = frame["item_id"].map(item_mean).fillna(prior).to_numpy()[:, None]
    return np.hstack([u, i, u * i, um, im]).astype(np.float32)


def fit_regressor(fit: tuple, valid: tuple, *, seed: int):
    """The MLP with the weight decay best on valid (RMSE)."""
    from sklearn.neural_network import MLPRegressor

    best = None
    for alpha in (1e-3, 1e-2, 1e-1):
        model = MLPRegressor(
            hidden_layer_sizes=(64,), alpha=alpha, max_iter=300, early_stopping=True, random_state=seed
        )
        model.fit(*fit)
        score = rmse_mae(valid[1], model.predict(valid[0]))["rmse"]
        if best is None or score < best[0]:
            best = (score, alpha, model)
    return best[2], best[1]


def projected(user_vec: dict, item_vec: dict, *, dims: int, seed: int) -> tuple[dict, dict]:
    """Both sides' text vectors on the first `dims` principal axes of the training users' and items' vectors."""
    from sklearn.decomposition import PCA

    stacked = np.stack([*user_vec.values(), *item_vec.values()])
    pca = PCA(n_components=min(dims, len(stacked)), random_state=seed).fit(stacked)
    return (
        dict(zip(user_vec, pca.transform(np.stack(list(user_vec.values()))))),
        dict(zip(item_vec, pca.transform(np.stack(list(item_vec.values()))))),
    )


def run_seed(data: pd.DataFrame, text: tuple[dict, dict], *, seed: int) -> dict:
    train, valid, test = (data[data["split"] == s] for s in ("train", "valid", "test"))
    prior = float(train["rating"].mean())
    yv, yt = valid["rating"].to_numpy(), test["rating"].to_numpy()
    out: dict[str, dict] = {"global_mean": rmse_mae(yt, np.full(len(test), prior))}
    strengths = (0.0, 1.0, 3.0, 10.0)
    k = min(
        strengths,
        key=lambda s: rmse_mae(
            yv, valid["item_id"].map(shrunk_means(train, "item_id", prior=prior, strength=s)).fillna(prior).to_numpy()
        )["rmse"],
    )
    item_mean = shrunk_means(train, "item_id", prior=prior, strength=k)
    user_mean = shrunk_means(train, "user_id", prior=prior, strength=k)
    out["item_mean"] = {**rmse_mae(yt, test["item_id"].map(item_mean).fillna(prior).to_numpy()), "shrinkage": k}
    users = {u: n for n, u in enumerate(train["user_id"].unique())}
    items = {i: n for n, i in enumerate(train["item_id"].unique())}
    best = None
    for dim in (8, 32):
        for wd in (0.01, 0.1):
            predict, P, Q = biased_mf(train, users, items, dim=dim, weight_decay=wd, seed=seed)
            score = rmse_mae(yv, predict(valid))["rmse"]
            if best is None or score < best[0]:
                best = (score, dim, wd, predict, P, Q)
    _, dim, wd, predict, P, Q = best
    out["biased_mf"] = {**rmse_mae(yt, predict(test)), "dim": dim, "weight_decay": wd}
    means = (user_mean, item_mean, prior)
    sides = {"regressor_id_only": {dim: ({u: P[n] for u, n in users.items()}, {i: Q[n] for i, n in items.items()})}}
    sides["regressor_text"] = {d: projected(*text, dims=d, seed=seed) for d in (16, 64)}  # width chosen on valid
    for name, by_width in sides.items():
        found = []
        for w, (uv, iv) in by_width.items():
            x, xv, xt = (features(f, uv, iv, means=means, width=w) for f in (train, valid, test))
            model, alpha = fit_regressor((x, train["rating"].to_numpy()), (xv, yv), seed=seed)
            found.append((rmse_mae(yv, model.predict(xv))["rmse"], w, alpha, model.predict(xt)))
        _, w, alpha, predicted = min(found, key=lambda f: f[0])
        out[name] = {**rmse_mae(yt, predicted), "alpha": alpha, "width": w}
    return out


def text_vectors(data: pd.DataFrame, meta_text: dict, encoder) -> tuple[dict, dict, int]:
    """(user -> mean of their training reviews' vectors, item -> its metadata text's vector or the mean of
    its training reviews', width)."""
    from plmrec.finetune.embed import encode_texts

    train = data[data["split"] == "train"]
    review = (train["review_title"].fillna("") + ". " + train["review_text"].fillna("")).str.slice(0, 500).tolist()
    vecs = encode_texts(encoder, review)
    width = vecs.shape[1]
    frame = pd.DataFrame({"user_id": train["user_id"].to_numpy(), "item_id": train["item_id"].to_numpy()})
    user = {u: vecs[idx].mean(0) for u, idx in frame.groupby("user_id").indices.items()}
    item = {i: vecs[idx].mean(0) for i, idx in frame.groupby("item_id").indices.items()}
    with_meta = [i for i in data["item_id"].unique() if meta_text.get(i)]
    if with_meta:
        for i, v in zip(with_meta, encode_texts(encoder, [meta_text[i][:1000] for i in with_meta])):
            item[i] = v
    return user, item, width


def main() -> None:
    from plmrec.data.amazon import item_text, load_items, load_reviews
    from plmrec.encoders import load_encoder
    from plmrec.pretrain.models import resolve_base_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="Amazon reviews (2018 or 2023 JSON lines, .gz)")
    ap.add_argument("--meta", default=None, help="the item metadata file, where there is one")
    ap.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out")
    args = ap.parse_args()
    started = time.perf_counter()
    data = temporal_split(load_reviews(args.data))
    meta_text = {}
    if args.meta:
        items = load_items(args.meta)
        meta_text = dict(zip(items["item_id"], item_text(items)))
    encoder = load_encoder(resolve_base_model(args.encoder), "mean", 128)
    user_vec, item_vec, _ = text_vectors(data, meta_text, encoder)
    runs = {seed: run_seed(data, (user_vec, item_vec), seed=seed) for seed in args.seeds}
    summary = {}
    for name in runs[args.seeds[0]]:
        for metric in ("rmse", "mae"):
            values = [runs[s][name][metric] for s in args.seeds]
            summary.setdefault(name, {})[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
    test = data[data["split"] == "test"]
    train = data[data["split"] == "train"]
    emit(
        {
            "benchmark": "rating_prediction",
            "data": str(args.data),
            "meta": str(args.meta or ""),
            "encoder": args.encoder,
            "reviews": {s: int((data["split"] == s).sum()) for s in ("train", "valid", "test")},
            "test_rows_with_known_user_and_item": int(
                (test["user_id"].isin(train["user_id"]) & test["item_id"].isin(train["item_id"])).sum()
            ),
            "items_with_metadata_text": int(sum(1 for i in data["item_id"].unique() if meta_text.get(i))),
            "seeds": args.seeds,
            "summary": summary,
            "runs": runs,
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
