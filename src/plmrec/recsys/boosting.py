"""Where a feature-based XGBoost model trains: in this process (`xgboost.backend: local`) or on a
Dask cluster (`dask`: xgboost.dask, the data split into one partition per worker).

Either way the caller gets the plain scikit-learn model back (a Dask fit is copied into it), so
prediction, importances, saving and serving do not depend on where it was trained. The cluster is
the one at `xgboost.dask_scheduler`, or a `LocalCluster` of `dask_workers` worker processes started
for the fit. A Dask fit is not bit-identical to the single-process one: each worker sketches the
quantiles of its own part, so split points differ slightly (metrics agree to a small tolerance; a
test states it).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from plmrec.config import BoostingBackend
from plmrec.errors import TrainingConfigError


@contextlib.contextmanager
def dask_client(xp: BoostingBackend):
    """A distributed Client on the configured scheduler, or on a LocalCluster closed afterwards."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise TrainingConfigError(
            "xgboost.backend: dask needs dask and distributed (pip install 'plmrec[dask]')"
        ) from None
    if xp.dask_scheduler:
        with Client(xp.dask_scheduler, timeout="30s") as client:
            yield client
        return
    with (
        LocalCluster(n_workers=xp.dask_workers, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _partitions(*arrays, npartitions: int):
    import dask.dataframe as dd

    out = []
    for a in arrays:
        frame = a if isinstance(a, (pd.DataFrame, pd.Series)) else pd.Series(np.asarray(a))
        out.append(dd.from_pandas(frame.reset_index(drop=True), npartitions=npartitions, sort=False))
    return out


def _fit_on_dask(model, dask_class: str, xp: BoostingBackend, *, x, y, eval_set: list[tuple], **groups) -> None:
    """Fit `xgboost.dask.<dask_class>` with `model`'s parameters on the data split one partition per
    worker, then copy the trained booster and its scikit-learn attributes into `model` (through its JSON).
    `groups`: a ranker's `qid` and `eval_qid`, partitioned the same way."""
    from xgboost import dask as dxgb

    with dask_client(xp) as client:
        n = max(1, len(client.scheduler_info()["workers"]))
        dx, dy = _partitions(x, y, npartitions=n)
        evals = [tuple(_partitions(ex, ey, npartitions=n)) for ex, ey in eval_set]
        if "qid" in groups:
            groups = {
                "qid": _partitions(groups["qid"], npartitions=n)[0],
                "eval_qid": [_partitions(q, npartitions=n)[0] for q in groups["eval_qid"]],
            }
        trained = getattr(dxgb, dask_class)(**model.get_params())
        trained.client = client
        trained.fit(dx, dy, eval_set=evals, verbose=False, **groups)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.json"
            trained.save_model(str(path))
            model.load_model(str(path))


def fit_classifier(model, xp: BoostingBackend, *, x: pd.DataFrame, y, eval_set: list[tuple]):
    """`model.fit(x, y, eval_set=...)` on the configured backend; returns `model`, fitted."""
    if xp.backend == "local":
        model.fit(x, y, eval_set=eval_set, verbose=False)
    else:
        _fit_on_dask(model, "DaskXGBClassifier", xp, x=x, y=y, eval_set=eval_set)
    return model


def fit_ranker(model, xp: BoostingBackend, *, x: pd.DataFrame, y, qid, eval_set: list[tuple], eval_qid: list):
    """`model.fit(x, y, qid=..., eval_set=..., eval_qid=...)` on the configured backend. On Dask each
    query group stays on one worker (xgboost's `allow_group_split=False`), so NDCG is computed per
    whole group as in one process."""
    if xp.backend == "local":
        model.fit(x, y, qid=qid, eval_set=eval_set, eval_qid=eval_qid, verbose=False)
    else:
        _fit_on_dask(model, "DaskXGBRanker", xp, x=x, y=y, eval_set=eval_set, qid=qid, eval_qid=eval_qid)
    return model
