"""Compare two folders of fhiradapter outputs, file by file (used by scripts/compare-outputs).

Byte comparison for every file, except where a field holds the moment or the duration of the run:
those fields are masked first (MASKED_KEYS in JSON, the run table's timestamps in SQLite). Parquet files are
compared by their schema and rows. Prints one line per file that differs and exits 1 if any does.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

MASKED_KEYS = {
    "seconds",
    "created",
    "started",
    "finished",
    "exported_at",
    "generated",
    "recorded",
    "worker_cpu_seconds",
}
# manifest.json: the run id is random; the digests of summary.json and writeback.json change with their masked fields
MANIFEST_MASKED = {"run_id", "summary.json", "writeback.json"}


def _mask(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: ("<masked>" if k in keys else _mask(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, keys) for v in value]
    return value


def _same(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.name == ".fhiradapter.lock":  # the process id of the run
        return True
    if a.name in {"summary.json", "manifest.json", "writeback.json"}:  # writeback: Provenance.recorded
        keys = MANIFEST_MASKED if a.name == "manifest.json" else MASKED_KEYS
        return bool(_mask(orjson.loads(a.read_bytes()), keys) == _mask(orjson.loads(b.read_bytes()), keys))
    if a.suffix == ".parquet":
        return bool(pq.read_table(a).equals(pq.read_table(b), check_metadata=False))
    if a.suffix == ".db":
        return _sqlite_rows(a) == _sqlite_rows(b)
    return False


def _sqlite_rows(path: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table' order by name")]
        rows = []
        for table in tables:
            cols = [r[1] for r in con.execute(f'pragma table_info("{table}")')]
            keep = [c for c in cols if c not in {"exported_at", "created_at", "started_at"}]
            select = ", ".join(f'"{c}"' for c in keep)
            rows.append((table, sorted(map(tuple, con.execute(f'select {select} from "{table}"')), key=repr)))
        return rows
    finally:
        con.close()


def main() -> int:
    base, head = Path(sys.argv[1]), Path(sys.argv[2])
    names = sorted(
        {p.relative_to(base) for p in base.rglob("*") if p.is_file()}
        | {p.relative_to(head) for p in head.rglob("*") if p.is_file()}
    )
    differ = 0
    for name in names:
        a, b = base / name, head / name
        if not a.exists() or not b.exists():
            print(f"only in {'head' if b.exists() else 'base'}: {name}")
            differ += 1
        elif not _same(a, b):
            print(f"differs: {name}")
            differ += 1
    print(f"{len(names)} files compared, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
