"""A finished sync run's summary as the store keeps it (``SyncRecord``) and ``fhiradapter runs`` reads it.

Apart from sync.py (which builds it) so that the store, which encodes and decodes it, does not depend on the run.
The stored JSON is the record's fields in order; runs stored by older versions lack the later fields (held,
approved_by, non_atomic, transaction_limit, ...), which decode to their defaults.
"""

from __future__ import annotations

import msgspec
import orjson

from fhiradapter.core.json_types import JsonObject
from fhiradapter.shell.server.limits import TransactionLimit


class EvaluatedCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What the run's evaluation read, used and rejected (its ``TimedRunSummary``'s counts)."""

    records_read: int
    records_used: int
    records_rejected: int
    rejects_by_reason: dict[str, int]


class LimitsSeen(msgspec.Struct, frozen=True, kw_only=True):
    """The store's transaction limit for the server as the run found it, what the run tried, and what it left."""

    found: TransactionLimit | None
    tried: TransactionLimit | None
    left: TransactionLimit | None


class SyncRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A sync run's summary, frozen when the run ends (``SyncSummary.record``): what it read, planned and wrote."""

    run_id: int
    server: str
    study: str = ""
    since: str | None = None
    watermark: str | None = None
    dry_run: bool = False
    patients: int = 0
    pulled: dict[str, int] = {}
    deleted: int = 0
    evaluated: EvaluatedCounts | None = None  # None: not evaluated (stored as {})
    plan: dict[str, int] = {}
    changes: dict[str, dict[str, dict[str, int]]] = {}  # per patient, per action: results of each kind
    held: int = 0
    held_folder: str | None = None
    approved_by: str | None = None
    pushed: dict[str, int] = {}
    provenances: int = 0
    conflicts: list[str] = []
    errors: list[str] = []
    warnings: list[str] = []
    non_atomic: list[str] = []
    transaction_limit: LimitsSeen | None = None
    requests: int = 0
    retries: int = 0
    per_search: int | None = msgspec.field(default=None, name="patients_per_search")
    split: int = 0
    failure: str | None = None
    seconds: dict[str, float] = {}  # per phase, rounded to the millisecond


def as_stored(record: SyncRecord) -> JsonObject:
    """The record as JSON (the store's column, ``runs --json``): a run not evaluated keeps ``"evaluated": {}``."""
    stored: JsonObject = msgspec.to_builtins(record)
    if record.evaluated is None:
        stored["evaluated"] = {}
    return stored


def encode(record: SyncRecord) -> str:
    return orjson.dumps(as_stored(record)).decode()


def decode(text: str) -> SyncRecord:
    """A stored summary, as this version or an older one stored it."""
    stored = orjson.loads(text)
    if stored.get("evaluated") == {}:
        stored["evaluated"] = None
    return msgspec.convert(stored, SyncRecord)
