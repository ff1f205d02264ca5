"""Typed errors. Every message says what was wrong and what to do about it."""

from __future__ import annotations


class Memr1Error(Exception):
    """Base class of every error memr1 raises on purpose."""


class ConfigError(Memr1Error, ValueError):
    """A parameter, profile or option name is wrong (unknown name, wrong type, bad value)."""


class DataNotFoundError(Memr1Error, FileNotFoundError):
    """A data file is not at any of the places searched and could not be downloaded."""


class DataIntegrityError(Memr1Error):
    """A downloaded or cached file does not have the pinned checksum."""


class DataFormatError(Memr1Error, ValueError):
    """A data file is malformed: truncated JSON, a missing key, a value of the wrong type."""

    def __init__(self, path: object, where: str, detail: str):
        self.path, self.where, self.detail = str(path), where, detail
        super().__init__(f"{self.path}: {where}: {detail}")


class UnknownIdError(Memr1Error, KeyError):
    """An id (dialogue turn, memory entry, conversation) does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class JudgeError(Memr1Error):
    """The LLM judge endpoint failed (unreachable, HTTP error, unparseable answer after retries)."""


class ModelLoadError(Memr1Error):
    """A model or tokenizer could not be loaded from the hub or a local path."""


class OperationError(Memr1Error, ValueError):
    """A Memory Manager output or operation is invalid (strict mode only; counting mode never raises).

    ``kind`` is the rejection kind, one of ``memr1.memory.ops.RejectKind`` values.
    """

    def __init__(self, kind: str, detail: str):
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind}: {detail}")


class StoreError(Memr1Error):
    """The persistent memory store is missing, corrupt, or asked for a turn it never committed."""


class ResultError(Memr1Error):
    """A stage result file does not match its schema (unknown or missing keys, another version)."""
