"""finish-tracking: the pipeline's exit handler (KFP only, not a stage): closes the MLflow parent run
with the pipeline's final state, failed or not."""

from __future__ import annotations

import json

from plmrec import tracking
from plmrec.stages.common import kfp_setup

NAME = "finish-tracking"


def kfp(config: dict, tracking_uri: str, run_key: str, *, state: str, message: str) -> None:
    """The KFP component's body."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    run_id = tracking.finish_parent(tracked["tracking_uri"], params, tracked["run_key"], status=state, message=message)
    print(json.dumps({"mlflow_parent_run": run_id, "state": state}))
