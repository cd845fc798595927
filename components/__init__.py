"""The KFP components, one file per stage, named after it (components/<stage>.py): each is the stage's
signature as KFP reads it (literal: inputs and outputs as its declaration in plmrec.stages.<module>
names them; a test holds the two equal) and a body that calls that module's `kfp` adapter.

This folder is the package `plmrec.components`: pyproject.toml maps it there (`package-dir`), so the
components are imported as `plmrec.components.<stage>` while they sit beside `pipelines/` at the top of
the repository. The body of each component imports plmrec inside the function, as KFP lightweight
components require; the image (params.pipeline.image) has plmrec installed.
"""

from plmrec.components.base import IMAGE
from plmrec.components.compare_models import compare_models
from plmrec.components.evaluate_baseline import evaluate_baseline
from plmrec.components.evaluate_retrieval import evaluate_retrieval
from plmrec.components.evaluate_search import evaluate_search
from plmrec.components.finetune import finetune
from plmrec.components.finish_tracking import finish_tracking
from plmrec.components.ingest import ingest
from plmrec.components.prepare import prepare
from plmrec.components.pretrain import pretrain
from plmrec.components.register_model import register_model
from plmrec.components.train_baseline import train_baseline
from plmrec.components.train_user_model import train_user_model
from plmrec.components.validate_prepared import validate_prepared
from plmrec.components.validate_raw import validate_raw

__all__ = [
    "IMAGE",
    "compare_models",
    "evaluate_baseline",
    "evaluate_retrieval",
    "evaluate_search",
    "finetune",
    "finish_tracking",
    "ingest",
    "prepare",
    "pretrain",
    "register_model",
    "train_baseline",
    "train_user_model",
    "validate_prepared",
    "validate_raw",
]
