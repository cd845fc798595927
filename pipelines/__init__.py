"""The KFP pipelines, assembled from the components (components/, one per stage): `training.py` is the
training pipeline and its compiler. This folder is the package `plmrec.pipelines` (pyproject.toml maps
it there with `package-dir`), so `plmrec compile` and the tests import it by that name."""

from plmrec.pipelines.training import build_training_pipeline, compile_pipeline

__all__ = ["build_training_pipeline", "compile_pipeline"]
