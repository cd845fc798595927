"""KFP pipelines assembled from `plmrec.components`."""

from plmrec.pipelines.training import build_training_pipeline, compile_pipeline

__all__ = ["build_training_pipeline", "compile_pipeline"]
