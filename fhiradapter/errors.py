"""The adapter's one exception tree and its exit codes.

```
AdapterError(Exception)                      exit_code = ExitCode.FAILURE
├── ConfigError(AdapterError, ValueError)    bad option, bad --as-of, unreadable or invalid mappings -> CONFIG
├── InputError(AdapterError, ValueError)     an input path is missing or unreadable as a whole        -> INPUT
├── TargetError(AdapterError)                an export target (database, folder) refused the write     -> TARGET
├── ServerError(AdapterError)                a FHIR server refused or failed a request (after retries) -> SERVER
│   └── AnswerLost(ServerError)              the request may have reached the server, its answer did not
├── OutputBusy(AdapterError)                 another run holds the output folder                       -> BUSY
├── NothingEvaluated(AdapterError)           the input held no patient to evaluate                     -> NOTHING
├── NotApproved(AdapterError)                a write-back no approval covers: nothing was sent   -> NOT_APPROVED
└── OutputError(AdapterError)                the output folder could not be written (disk, permission) -> OUTPUT
```

A clinical "no" (ineligible, progression, grade-3 event) is never an exception: it is a decision with
reasons. A bad record is never an exception either: it is an ``Issue`` value that ends up in
``rejects.ndjson``. Only ``fhiradapter.cli`` turns these exceptions into messages and exit codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


class ExitCode(enum.IntEnum):
    """Process exit codes; numbers are never reused."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # click's own code for a malformed command line
    CONFIG = 10
    INPUT = 11
    TARGET = 12
    SERVER = 13
    BUSY = 14  # another run is writing into the same --out
    NOTHING = 15  # nothing could be evaluated (no study subject in the input)
    OUTPUT = 16  # --out could not be written (permission, read-only, disk full, not a folder)
    NOT_APPROVED = 17  # a write-back without an approval that covers it: nothing was sent


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose; its message is shown to the user as is."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class ConfigError(AdapterError, ValueError):
    """Settings or mappings are unusable (unknown key, bad value, unreadable file, bad date)."""

    exit_code = ExitCode.CONFIG


class InputError(AdapterError, ValueError):
    """An input path cannot be read at all (missing, not a file or folder, permission denied)."""

    exit_code = ExitCode.INPUT


class TargetError(AdapterError):
    """An export target could not be written (database unreachable, write refused); nothing was changed."""

    exit_code = ExitCode.TARGET


@dataclass(frozen=True)
class ServerRequest:
    """A request to a FHIR server, as errors name it: the method and where (the path relative to the server's
    base, or the URL elsewhere), never its query string (search values can name patients) nor a credential."""

    method: str
    url: str

    def __str__(self) -> str:
        return f"{self.method} {self.url}"


@dataclass(frozen=True)
class OutcomeIssue:
    """One issue of a server's OperationOutcome: its severity, code and diagnostics (else its details' text)."""

    severity: str
    code: str
    diagnostics: str

    def __str__(self) -> str:
        return f"{self.severity} {self.code}: {self.diagnostics}".strip()


class ServerError(AdapterError):
    """A FHIR server refused a request or kept failing it; the message holds its OperationOutcome text.

    What it is about, for code that decides on it rather than on the message: ``request`` (the request's method
    and where, without query or credentials), ``status`` (the HTTP status, when an answer came) and ``issues``
    (the answer's OperationOutcome issues, () when it had none).
    """

    exit_code = ExitCode.SERVER

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        request: ServerRequest,
        issues: tuple[OutcomeIssue, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request = request
        self.issues = issues


class AnswerLost(ServerError):
    """The request may have reached the server (it timed out, or the connection dropped after it was sent), but
    no answer came back: a write may or may not have been applied, and must be checked on the server."""


class OutputBusy(AdapterError):
    """Another run holds the output folder's lock; nothing was written."""

    exit_code = ExitCode.BUSY


class NothingEvaluated(AdapterError):
    """The input held no patient to evaluate (empty, or no study subject); the outputs say what was read."""

    exit_code = ExitCode.NOTHING


class OutputError(AdapterError):
    """The output folder could not be written; the message names the path and the cause. Nothing partial is
    left in place of an earlier run's outputs."""

    exit_code = ExitCode.OUTPUT


class NotApproved(AdapterError):
    """A write-back that no approval covers (none, or the files changed after it): nothing was sent."""

    exit_code = ExitCode.NOT_APPROVED
