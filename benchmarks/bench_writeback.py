"""Building the write-back three ways: plain dicts (as until 2026-12-07), msgspec Structs, fhir.resources R4B.

For every patient of a generated cohort: the plan (every result a create, as on a first write-back), each
entry built and serialised to JSON bytes as writeback.json holds them. The three ways:

- ``dicts``: the dict-building ``core/writeback.py`` of commit ``BASE`` (read with ``git show``), orjson;
- ``structs``: today's ``core/writeback.py`` (``core/fhir_out`` Structs), msgspec;
- ``r4b``: the ``dicts`` entries, each constructed as a ``fhir.resources.R4B`` ``BundleEntry`` model (pydantic
  validates on construction, the resource inside it too) and serialised with ``model_dump_json``.

The patients' results are evaluated once (cached beside the cohort) and decoded before timing; ``load`` is a
process that only decodes them, so that each way's peak memory can be read over it. Each way runs in a fresh
process (its own peak RSS), in rounds (every way once per round; ``r4b`` in the first ``--r4b-rounds`` only, it
takes minutes), medians kept; times are given as ratios to ``structs`` measured in the same round. Nothing is
kept of the entries built but their count and size (writeback.json is streamed to disk). Never run by CI
(timing is not a test).

    python benchmarks/bench_writeback.py                 # 10,000 patients, 3 rounds
    python benchmarks/bench_writeback.py --patients 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from generate import generate  # noqa: E402 - the generator lives beside this script

BASE = "9971da7"  # the last commit whose write-back was built as dicts

EVALUATE = """
import pickle, sys
from datetime import date
from pathlib import Path
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run import outputs, pipeline
subjects = []
add = outputs.PatientParts.add
def keep(self, result, plan, extract):
    subjects.append(result)
    add(self, result, plan, extract)
outputs.PatientParts.add = keep  # one worker runs in this process: every result passes here
mappings, identity = load_mappings()
pipeline.run_evaluate([Path(sys.argv[1])], Path(sys.argv[2]), date(2005, 12, 31), mappings, identity,
                      workers=1, report=False, writeback=False)
Path(sys.argv[2], "subjects.pickle").write_bytes(pickle.dumps(subjects))
"""

WAY = """
import json, pickle, resource, subprocess, sys, time, types
from pathlib import Path
import msgspec, orjson
from fhiradapter.core.protocol import StudyKey

way, results, base = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
subjects = pickle.loads((results / "subjects.pickle").read_bytes())
protocol = orjson.loads((results / "summary.json").read_bytes())["protocol"]["id"]

if way in ("dicts", "r4b"):
    old = sys.modules["writeback_dicts"] = types.ModuleType("writeback_dicts")  # dataclasses look it up
    source = subprocess.run(["git", "show", f"{base}:fhiradapter/core/writeback.py"], capture_output=True,
                            text=True, check=True, cwd=sys.argv[4]).stdout
    exec(compile(source, "writeback_dicts", "exec"), old.__dict__)
    wb = old
else:
    from fhiradapter.core import writeback as wb
    from fhiradapter.core.fhir_out import encode
if way == "r4b":
    from fhir.resources.R4B.bundle import BundleEntry
    BundleEntry.model_validate({"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Basic", "code": {}}})

ctx = wb.WritebackContext(protocol, StudyKey("study-1"))
entries = size = 0  # the bytes are counted, not kept: writeback.json is streamed to disk
t = time.perf_counter()
if way != "load":
    for subject in subjects:
        for entry in wb.plan_patient(subject, [], None, ctx):
            bundled = wb.bundle_entry(entry)
            if way == "structs":
                written = encode(bundled)
            elif way == "dicts":
                written = orjson.dumps(bundled)
            else:
                written = BundleEntry.model_validate(bundled).model_dump_json(exclude_none=True).encode()
            entries += 1
            size += len(written)
dt = time.perf_counter() - t
print(json.dumps({"entries": entries, "bytes": size, "seconds": dt, "patients": len(subjects),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WAYS = ("load", "dicts", "structs", "r4b")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def results_of(size: int, data: Path) -> Path:
    """The results of the generated cohort of ``size`` patients (evaluated once, then reused)."""
    folder = data / f"p{size}"
    out = data / f"wb-results-{size}"
    if not (out / "subjects.pickle").exists():
        if not (folder / "Observation.ndjson").exists():
            generate(size, folder, seed=7)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", EVALUATE, str(folder), str(out)], check=True)
        print(f"evaluated {size} patients in {time.perf_counter() - t:.0f} s (not timed)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--r4b-rounds", type=int, default=1, help="rounds that also run R4B (minutes each)")
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    args = parser.parse_args()
    results = results_of(args.patients, args.data)
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for n in range(args.rounds):
        for way in WAYS:
            if way != "r4b" or n < args.r4b_rounds:  # R4B takes minutes a round
                runs[way].append(measure(WAY, way, str(results), BASE, str(ROOT)))
    load_mb = median([r["peak_mb"] for r in runs["load"]])
    structs = runs["structs"]
    print(f"{structs[0]['patients']} patients, {structs[0]['entries']} entries, {args.rounds} round(s)")
    print(f"{'way':>8} {'seconds':>8} {'x structs':>9} {'entries/s':>10} {'peak MB':>8} {'over load':>9} {'MB out':>7}")
    summary = {}
    for way in WAYS[1:]:
        mine = runs[way]
        ratio = median([m["seconds"] / s["seconds"] for m, s in zip(mine, structs, strict=False)])
        seconds, peak = median([m["seconds"] for m in mine]), median([m["peak_mb"] for m in mine])
        summary[way] = {"seconds": seconds, "ratio": ratio, "peak_mb": peak, "over_load_mb": peak - load_mb}
        print(
            f"{way:>8} {seconds:>8.2f} {ratio:>9.2f} {mine[0]['entries'] / seconds:>10,.0f} {peak:>8.0f} "
            f"{peak - load_mb:>9.0f} {mine[0]['bytes'] / 1e6:>7.1f}"
        )
    (args.data / "bench-writeback.json").write_text(json.dumps({"load_mb": load_mb, **summary}, indent=1))


if __name__ == "__main__":
    main()
