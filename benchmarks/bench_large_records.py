"""A whole pull of patients with large records: one patient per search against several, with 50 ms per request.

A patient followed for years can have thousands of Observations. This takes the first ``--patients`` of the
synthetic cohort (``generate.py``), adds ``--vitals`` heart-rate Observations to each (an unmapped code, as a
hospital's vital signs are), loads them into a local sekmet-fhir server (started on 127.0.0.1, stopped by
PID, as the tests do) and pulls the study at concurrency 8, through a transport that adds 50 ms before every
request, asking for 1 patient per search and then for all of them in one search; each twice, alternating.

Reported: seconds, requests, resources pulled, and how many grouped searches paged on past half their patients
and were read patient by patient instead (``PullSummary.split``). Both pulls must find the same resources.
Runs the source tree (the pull is network-bound). Never run by CI.

    python benchmarks/bench_large_records.py                      # 10 patients, 1,000 extra Observations each
    python benchmarks/bench_large_records.py --patients 5 --vitals 2000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_sync import Latency  # noqa: E402
from builders import heart_rates  # noqa: E402 - the tests' builders
from fhir_server import load_input, sekmet_server  # noqa: E402 - the tests' server helpers
from generate import generate  # noqa: E402

from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient  # noqa: E402
from fhiradapter.shell.server.pull import pull_into  # noqa: E402
from fhiradapter.shell.server.pull_folder import NdjsonSink  # noqa: E402

STUDY = "thal-hcc-pilot"


def cohort(source: Path, out: Path, patients: int, vitals: int) -> None:
    """The first ``patients`` of ``source`` with their resources, plus ``vitals`` Observations each."""
    out.mkdir(parents=True)
    keep = {orjson.loads(line)["id"] for line in (source / "Patient.ndjson").read_bytes().splitlines()[:patients]}
    refs = [f'"Patient/{p}"'.encode() for p in keep]
    for f in sorted(source.glob("*.ndjson")):
        lines = f.read_bytes().splitlines()
        if f.name == "Patient.ndjson":
            lines = [line for line in lines if orjson.loads(line)["id"] in keep]
        elif f.name not in ("ResearchStudy.ndjson", "Medication.ndjson"):
            lines = [line for line in lines if any(ref in line for ref in refs)]
        (out / f.name).write_bytes(b"\n".join(lines) + b"\n")
    extra = [orjson.dumps(r) for p in sorted(keep) for r in heart_rates(p, vitals)]
    (out / "Vitals.ndjson").write_bytes(b"\n".join(extra) + b"\n")


def pull_once(base: str, per_search: int, latency: float, folder: Path) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        settings = ClientSettings(concurrency=8)
        async with FhirClient(base, settings=settings, transport=Latency(latency)) as client:
            cap = await client.capabilities()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            sink = NdjsonSink(folder)
            clock = time.perf_counter()
            summary = await pull_into(client, cap, STUDY, sink, per_search=per_search)
            seconds = time.perf_counter() - clock
            sink.close(True)
            return {
                "per_search": per_search,
                "seconds": seconds,
                "requests": client.requests,
                "resources": sum(summary.resources.values()),
                "split": summary.split,
            }

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--vitals", type=int, default=1000, help="extra Observations per patient")
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    source = HERE / ".data" / "sync-p100"
    if not source.exists():
        generate(100, source)
    work = Path(tempfile.mkdtemp(prefix="fhiradapter-bench-large-"))
    try:
        cohort(source, work / "input", args.patients, args.vitals)
        with sekmet_server(work) as base:
            clock = time.perf_counter()
            load_input(base, work / "input", chunk=500)
            loaded = time.perf_counter() - clock
            print(
                f"{args.patients} patients, {args.vitals} extra Observations each, loaded in {loaded:.0f} s; "
                f"concurrency 8, {args.latency_ms:.0f} ms per request"
            )
            found: set[int] = set()
            for per_search in (1, args.patients, 1, args.patients):
                r = pull_once(base, per_search, args.latency_ms / 1000, work / f"pull-{per_search}")
                found.add(r["resources"])
                print(
                    f"  {r['per_search']:>3} patient(s) per search: {r['seconds']:5.1f} s, {r['requests']} requests, "
                    f"{r['resources']} resources, {r['split']} search(es) split patient by patient"
                )
            if len(found) != 1:
                raise SystemExit(f"the pulls found different numbers of resources: {sorted(found)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
