"""Every error plmrec raises on purpose, in one catalogue.

Each class knows how it ends a command (`exit_code`, read by the CLI) and, where it can reach the
model server, the HTTP status it is answered with (`http_status`). The message says what was
wrong, where, and the fix. Exit codes: 1 a run failed or was interrupted, 2 bad configuration or
unreadable input, 3 data validation failed.
"""

from __future__ import annotations


class PlmrecError(Exception):
    """Base class: the message says what was wrong and where."""

    exit_code = 2
    http_status = 500


# ---------------------------------------------------------------------------- configuration
class ConfigError(PlmrecError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


class TrainingConfigError(PlmrecError):
    """A pretraining, fine-tuning or training-loop setting cannot work; raised before training starts."""


# ---------------------------------------------------------------------------- data
class DataLoadError(PlmrecError):
    """A data file could not be read into a table (missing, empty, corrupt, wrong encoding)."""


class DataValidationFailed(PlmrecError):
    """A great-expectations suite failed; `report_path` points at the written report."""

    exit_code = 3

    def __init__(self, message: str, report_path: str | None = None):
        super().__init__(message)
        self.report_path = report_path


class PairError(PlmrecError):
    """Fine-tuning pairs cannot be built as asked (for example, they would leak the evaluation window)."""


# ---------------------------------------------------------------------------- training
class Interrupted(PlmrecError):
    """Stopped by SIGTERM or SIGINT (plmrec.interrupts); the message says what is kept and how to go on.
    Exits as a process killed by that signal does in a shell: 128 + its number (143, 130)."""

    exit_code = 143

    def __init__(self, message: str, *, signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingInterrupted(PlmrecError):
    """Stopped by SIGTERM after saving a checkpoint; rerunning resumes from it."""

    exit_code = 1


class EarlyStop(PlmrecError):
    """Control flow, never shown: a training loop's callback ends the loop (valid stopped improving)."""

    exit_code = 0


class StageError(PlmrecError):
    """A stage cannot run with what the earlier stages left (a missing encoder, an unevaluated model)."""


# ---------------------------------------------------------------------------- registry and cluster
class TrackingUnavailable(PlmrecError):
    """The MLflow tracking server did not answer, after the MLflow client's own retries with backoff."""


class RegistryError(PlmrecError):
    """The model registry cannot do what was asked (no such alias, nothing to roll back to, no metric)."""


class ManifestError(PlmrecError):
    """A kustomize overlay cannot be rendered or checked."""


class SubmitError(PlmrecError):
    """Kubeflow Pipelines refused or could not be reached."""


class DeployError(PlmrecError):
    """The InferenceService cannot be pointed at a registered version."""


class TrainJobFailed(PlmrecError):
    """A distributed training job (Kubeflow Trainer TrainJob) failed or timed out; the message carries
    the job's own reason and message."""

    exit_code = 1


# ---------------------------------------------------------------------------- serving
class BundleError(PlmrecError):
    """A serving bundle is missing, incomplete or of another format: the server cannot answer."""


class RequestError(PlmrecError, ValueError):
    """A client mistake, answered with `http_status` (400 unless given) and `{"error": message}`."""

    http_status = 400
    kind = "invalid_request"  # the reason label the server counts it under (plmrec_client_errors_total)

    def __init__(self, reason: str, status: int | None = None, *, kind: str | None = None):
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.http_status = status
        if kind is not None:
            self.kind = kind
