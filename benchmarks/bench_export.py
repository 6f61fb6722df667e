"""Throughput and peak memory of ``fhiradapter export`` against a floor: the same rows through stdlib sqlite3.

The baseline, in its own fresh process, parses results.json and clinical.ndjson whole with orjson and inserts
the registry rows (built by the same core functions, untimed) with ``sqlite3.executemany`` into plain tables:
what any exporter must at least pay in time (it holds everything in memory, which the export does not).
Each export target is then timed in a fresh process, end to end
(reading, row building, migrations, one transaction / file writing). Ratios are reported against the floor
from the same run. Never run by CI (timing is not a test).

    python benchmarks/bench_export.py                     # the 10k-patient cohort of bench_evaluate
    python benchmarks/bench_export.py --patients 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
sys.path.insert(0, str(HERE))

from fresh import report, run_fresh  # noqa: E402 - beside this script
from generate import generate  # noqa: E402 - the generator lives beside this script


class Measured(msgspec.Struct, frozen=True):
    """What one child reports: the rows written, its wall time, its peak RSS."""

    rows: int
    seconds: float
    peak_mb: float


def baseline(argv: list[str]) -> None:
    """The floor, in a fresh process: results.json and clinical.ndjson parsed whole with orjson, then the
    registry rows (built untimed) inserted with ``sqlite3.executemany``. ``argv``: the results folder, the db."""
    import resource
    import sqlite3

    import orjson

    from fhiradapter.core.extract import ClinicalExtract
    from fhiradapter.core.readback import decode_subject
    from fhiradapter.core.registry import Row, SubjectView, table_rows

    folder, db = Path(argv[0]), argv[1]
    t0 = time.perf_counter()
    doc = orjson.loads((folder / "results.json").read_bytes())
    extracts = [orjson.loads(line) for line in (folder / "clinical.ndjson").open("rb")]
    t_read = time.perf_counter() - t0
    # Untimed: the floor is reading + inserting. The core builds the rows from typed values: each subject and
    # its extract is typed from what orjson read, one at a time (the peak holds what orjson read and the rows).
    by_patient = {e["patient"]: e for e in extracts}
    tables: dict[str, list[Row]] = {}
    for s in doc["subjects"]:
        result = decode_subject(orjson.dumps(s))
        extract = by_patient.get(result.patient)
        view = SubjectView(result, msgspec.convert(extract, ClinicalExtract) if extract else None, None)
        for name, rows in table_rows(view).items():
            tables.setdefault(name, []).extend(rows)
    conn = sqlite3.connect(db)
    t1 = time.perf_counter()
    n = 0
    for name, rows in tables.items():
        cols = list(rows[0]) if rows else []
        if not cols:
            continue
        conn.execute(f"CREATE TABLE {name} ({', '.join(cols)})")
        values = [tuple(r[c] for c in cols) for r in rows]
        insert = f"INSERT INTO {name} VALUES ({', '.join('?' * len(cols))})"  # noqa: S608 - the core's own tables
        conn.executemany(insert, values)
        n += len(rows)
    conn.commit()
    conn.close()
    dt = t_read + time.perf_counter() - t1
    report(Measured(n, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def export_once(argv: list[str]) -> None:
    """One ``export`` run, timed end to end in a fresh process. ``argv``: the results folder, the target URL,
    the format (tables, sdtm), plain or pseudo."""
    import resource

    from fhiradapter.core.registry import ExportFormat
    from fhiradapter.shell.registry.export import export

    formats: dict[str, ExportFormat] = {"tables": "tables", "sdtm": "sdtm"}
    key = b"k" * 32 if argv[3] == "pseudo" else None
    t = time.perf_counter()
    summary = export(Path(argv[0]), argv[1], formats[argv[2]], key)
    dt = time.perf_counter() - t
    rows = sum(i + u for _n, i, u, _s in summary.lines)
    report(Measured(rows, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def results_folder(patients: int) -> Path:
    out = DATA / f"out-{patients}"
    if not (out / "clinical.ndjson").exists():
        src = DATA / f"p{patients}"
        if not src.exists():
            generate(patients, src)
        subprocess.run(
            ["fhiradapter", "evaluate", str(src), "--as-of", "2005-12-31", "--out", str(out), "--no-report"],
            check=True,
            capture_output=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=10_000)
    args = parser.parse_args()
    folder = results_folder(args.patients)
    work = DATA / "export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = run_fresh("bench_export", "baseline", Measured, str(folder), str(work / "baseline.db"))
    print(f"{args.patients} patients, {base.rows} registry rows")
    print(f"{'target':<34} {'rows/s':>9} {'seconds':>8} {'ratio':>6} {'peak MB':>8}")
    print(
        f"{'floor: orjson + sqlite3':<34} {base.rows / base.seconds:>9.0f} {base.seconds:>8.2f} {1:>6.2f} "
        f"{base.peak_mb:>8.0f}"
    )
    cases = [
        ("sqlite tables", f"sqlite:///{work / 'r.db'}", "tables", "plain"),
        ("sqlite tables, again (unchanged)", f"sqlite:///{work / 'r.db'}", "tables", "plain"),
        ("sqlite tables, pseudonymised", f"sqlite:///{work / 'p.db'}", "tables", "pseudo"),
        ("parquet tables", f"parquet:{work / 'pq'}", "tables", "plain"),
        ("csv sdtm", f"csv:{work / 'sdtm'}", "sdtm", "plain"),
        ("parquet sdtm, pseudonymised", f"parquet:{work / 'sdtm-pq'}", "sdtm", "pseudo"),
    ]
    results: dict[str, dict[str, float]] = {}
    for label, url, fmt, mode in cases:
        r = run_fresh("bench_export", "export_once", Measured, str(folder), url, fmt, mode)
        rate = r.rows / r.seconds
        ratio = base.seconds / r.seconds if fmt == "tables" else float("nan")
        results[label] = {**msgspec.structs.asdict(r), "rate": rate, "ratio": ratio}
        print(f"{label:<34} {rate:>9.0f} {r.seconds:>8.2f} {ratio:>6.2f} {r.peak_mb:>8.0f}")
    (DATA / f"bench-export-{args.patients}.json").write_text(
        json.dumps({"baseline": msgspec.structs.asdict(base), **results}, indent=2)
    )


if __name__ == "__main__":
    main()
