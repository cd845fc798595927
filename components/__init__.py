"""KFP components: thin wrappers that move artifacts in and out of `plmrec.stages`.

Each component body imports plmrec inside the function, as KFP lightweight components
require; the component image (`plmrec.components.IMAGE`, or params.pipeline.image at
compile time) has plmrec installed.
"""

from plmrec.components.stages import (
    compare_models,
    evaluate_baseline,
    evaluate_retrieval,
    finetune_encoder,
    finish_tracking,
    ingest,
    prepare_data,
    pretrain_encoder,
    register_model,
    train_baseline,
    validate_data,
)

__all__ = ["compare_models", "evaluate_baseline", "evaluate_retrieval", "finetune_encoder", "finish_tracking", "ingest", "prepare_data",
           "pretrain_encoder", "register_model", "train_baseline", "validate_data"]
