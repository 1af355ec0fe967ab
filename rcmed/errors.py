"""Typed errors that tell the user what went wrong and what to do.

Every problem with user input raises a subclass of `RCMedInputError`; its message starts with
the file (or argument) it concerns. Messages never carry patient data: callers pass file names
and measured facts, never DICOM header values.
"""

from __future__ import annotations

from pathlib import Path


class RCMedError(Exception):
    """Base class of every error RCMed raises on purpose."""


class RCMedInputError(RCMedError, ValueError):
    """Input that RCMed cannot use. `str(err)` is one line: `<what>: <problem>; <what to do>`."""

    def __init__(self, what: str | Path, problem: str) -> None:
        self.what = str(what)
        self.problem = problem
        super().__init__(f"{self.what}: {problem}")


class UnsupportedFormatError(RCMedInputError):
    """The file's extension or content is no format RCMed reads."""


class CorruptFileError(RCMedInputError):
    """The file claims a known format but cannot be decoded (truncated, damaged)."""


class EmptyInputError(RCMedInputError):
    """A folder holds nothing RCMed can read, or an array has no elements."""


class MixedSeriesError(RCMedInputError):
    """A DICOM folder holds more than one series, or slices that do not stack."""


class UnsupportedTransferSyntaxError(RCMedInputError):
    """DICOM pixel data in a transfer syntax no installed decoder handles."""


class ImageTooLargeError(RCMedInputError):
    """The header announces more voxels than the configured limit."""


class ShapeMismatchError(RCMedInputError):
    """Image and mask (or two arrays that must agree) differ in shape."""


class InvalidMaskError(RCMedInputError):
    """A mask that should be binary holds other values, or a label map is malformed."""


class NonFiniteError(RCMedInputError):
    """An image holds NaN or infinite values."""


class UnknownModalityError(RCMedInputError):
    """A modality name RCMed does not know."""


class StoreError(RCMedInputError):
    """A triplet store (manifest or shards) that is missing, damaged or inconsistent."""


class LimitExceededError(RCMedInputError):
    """An upload, archive or request over a configured size limit (HTTP 413)."""
