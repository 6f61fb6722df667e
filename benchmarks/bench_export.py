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
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
sys.path.insert(0, str(HERE))

from generate import generate  # noqa: E402 - the generator lives beside this script

BASELINE = """
import json, resource, sqlite3, sys, time
from pathlib import Path
import orjson
from fhiradapter.core.registry import SubjectView, table_rows
folder, db = Path(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
doc = orjson.loads((folder / "results.json").read_bytes())
extracts = [orjson.loads(line) for line in (folder / "clinical.ndjson").open("rb")]
t_read = time.perf_counter() - t0
tables = {}
for s in doc["subjects"]:  # untimed: the floor is reading + inserting
    for name, rows in table_rows(SubjectView(s, None, None)).items():
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
    conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(cols))})", values)
    n += len(rows)
conn.commit(); conn.close()
dt = t_read + time.perf_counter() - t1
print(json.dumps({"rows": n, "seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EXPORT = """
import json, resource, sys, time
from pathlib import Path
from fhiradapter.shell.registry.export import export
key = b"k" * 32 if sys.argv[4] == "pseudo" else None
t = time.perf_counter()
summary = export(Path(sys.argv[1]), sys.argv[2], sys.argv[3], key)
dt = time.perf_counter() - t
rows = sum(i + u for _n, i, u, _s in summary.lines)
print(json.dumps({"rows": rows, "seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
    base = run(BASELINE, str(folder), str(work / "baseline.db"))
    print(f"{args.patients} patients, {base['rows']} registry rows")
    print(f"{'target':<34} {'rows/s':>9} {'seconds':>8} {'ratio':>6} {'peak MB':>8}")
    print(
        f"{'floor: orjson + sqlite3':<34} {base['rows'] / base['seconds']:>9.0f} {base['seconds']:>8.2f} {1:>6.2f} "
        f"{base['peak_mb']:>8.0f}"
    )
    cases = [
        ("sqlite tables", f"sqlite:///{work / 'r.db'}", "tables", "plain"),
        ("sqlite tables, again (unchanged)", f"sqlite:///{work / 'r.db'}", "tables", "plain"),
        ("sqlite tables, pseudonymised", f"sqlite:///{work / 'p.db'}", "tables", "pseudo"),
        ("parquet tables", f"parquet:{work / 'pq'}", "tables", "plain"),
        ("csv sdtm", f"csv:{work / 'sdtm'}", "sdtm", "plain"),
        ("parquet sdtm, pseudonymised", f"parquet:{work / 'sdtm-pq'}", "sdtm", "pseudo"),
    ]
    results = {}
    for label, url, fmt, mode in cases:
        r = run(EXPORT, str(folder), url, fmt, mode)
        rate = r["rows"] / r["seconds"]
        ratio = base["seconds"] / r["seconds"] if fmt == "tables" else float("nan")
        results[label] = {**r, "rate": rate, "ratio": ratio}
        print(f"{label:<34} {rate:>9.0f} {r['seconds']:>8.2f} {ratio:>6.2f} {r['peak_mb']:>8.0f}")
    (DATA / f"bench-export-{args.patients}.json").write_text(json.dumps({"baseline": base, **results}, indent=2))


if __name__ == "__main__":
    main()
