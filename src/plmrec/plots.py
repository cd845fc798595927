"""The pictures plmrec writes for reports, MLflow and the KFP UI (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: list[list[int]], path: str | Path, title: str) -> Path:
    """A confusion matrix with its counts."""
    plt = _pyplot()
    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, f"{v}", ha="center", va="center", fontsize=8, color="black" if v < arr.max() / 2 else "white")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_losses(report: dict, path: str | Path) -> Path:
    """One panel per training phase: its logged loss by step."""
    plt = _pyplot()
    phases = report["phases"]
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(3.2 * max(1, len(phases)), 2.8), squeeze=False)
    for ax, ph in zip(axes[0], phases):
        steps, losses = zip(*ph["losses"]) if ph["losses"] else ((), ())
        ax.plot(steps, losses, marker="." if len(steps) < 40 else None)
        ax.set_title(ph["label"], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    return _save(plt, fig, path)


def plot_curves(curves: dict[str, list[float]], path: str | Path, ks: list[int]) -> Path:
    """One line per model: precision at each cut-off in `ks`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in curves.items():
        ax.plot(ks, values, marker=".", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("precision@K (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_importance(importance: dict[str, float], path: str | Path, title: str, *, top: int = 20) -> Path:
    """The `top` features by gain share, largest at the top."""
    plt = _pyplot()
    items = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
    fig, ax = plt.subplots(figsize=(5.5, 0.25 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("importance (gain share)")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def plot_embedding_space(vectors: np.ndarray, clusters: int, path: str | Path, *, title: str, seed: int = 0) -> dict:
    """2-D PCA of item embeddings coloured by KMeans cluster (both fitted on these vectors)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    plt = _pyplot()
    k = max(1, min(clusters, len(vectors)))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors)
    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(vectors)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10" if k <= 10 else "tab20", s=6, alpha=0.75)
    ax.legend(*sc.legend_elements(), title="cluster", fontsize=7, title_fontsize=8, loc="best", markerscale=0.8)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%})")
    ax.set_title(title, fontsize=10)
    _save(plt, fig, path)
    return {"explained_variance_2d": float(ratio.sum()), "clusters": k}


def plot_by_category(table, metric: str, path: str | Path, *, title: str) -> Path:
    """Grouped bars: `metric` per category (rows) for each ranker (bars), from a long table with
    columns category, ranker, metric."""
    plt = _pyplot()
    wide = table.pivot(index="category", columns="ranker", values=metric)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(wide) * max(1, len(wide.columns)) / 2), 4.5))
    wide.plot.bar(ax=ax, width=0.8)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(3, len(wide.columns)))
    ax.tick_params(axis="x", labelsize=7)
    return _save(plt, fig, path)
