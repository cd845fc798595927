"""Errors that carry a message meant for the person running the pipeline."""


class PlmrecError(Exception):
    """Base class: the message says what was wrong and where."""


class DataLoadError(PlmrecError):
    """A data file could not be read into a table (missing, empty, corrupt, wrong encoding)."""


class DataValidationFailed(PlmrecError):
    """A great-expectations suite failed; `report_path` points at the written report."""

    def __init__(self, message: str, report_path: str | None = None):
        super().__init__(message)
        self.report_path = report_path
