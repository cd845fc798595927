"""The pipeline's exit handler: closes the MLflow parent run (plmrec.stages.finish_tracking)."""

from kfp import dsl

from plmrec.components.base import component


@component
def finish_tracking(config: dict, tracking_uri: str, run_key: str, job_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final state."""
    from plmrec.stages import finish_tracking

    finish_tracking.kfp(config, tracking_uri, run_key or job_id, state=status.state, message=status.error_message or "")
