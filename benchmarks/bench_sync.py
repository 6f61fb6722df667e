"""Patients synced per second against a local FHIR server with 50 ms added latency, at concurrency 1 and 8.

For each concurrency a fresh sekmet-fhir server (started on 127.0.0.1 and stopped by PID, as the tests do) is
loaded with the seeded synthetic cohort of ``generate.py``; then one full ``sync`` (pull, evaluate, push) runs
in this process through a transport that sleeps 50 ms before every request (what a hospital server across a
network costs). Reported: patients per second for the pull and for the whole sync, the ratio between the two
concurrencies (target >= 6x for the pull), and client CPU per request. Never run by CI.

    python benchmarks/bench_sync.py                 # 200 patients
    python benchmarks/bench_sync.py --patients 50 --latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from fhir_server import load_input, sekmet_server  # noqa: E402 - the tests' server helpers
from generate import generate  # noqa: E402

from fhiradapter.shell.fhir_client import ClientSettings, FhirClient  # noqa: E402
from fhiradapter.shell.mappings_io import load_mappings  # noqa: E402
from fhiradapter.shell.server_io import NdjsonSink, pull_into  # noqa: E402
from fhiradapter.shell.store import SyncStore  # noqa: E402
from fhiradapter.shell.sync import SyncOptions, run_sync  # noqa: E402


class Latency(httpx.AsyncBaseTransport):
    """Adds a fixed delay before each request, as a network hop to a hospital server would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.seconds)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def measure(folder: Path, concurrency: int, latency: float, work: Path) -> dict[str, Any]:
    with sekmet_server(work) as base:
        load_input(base, folder, chunk=500)
        settings = ClientSettings(concurrency=concurrency)

        def client() -> FhirClient:
            return FhirClient(base, settings=settings, transport=Latency(latency))

        async def pull_only() -> tuple[int, int, float]:
            async with client() as c:
                cap = await c.capabilities()
                sink = NdjsonSink(work / "pull")
                (work / "pull").mkdir(exist_ok=True)
                cpu = time.process_time()
                summary = await pull_into(c, cap, "thal-hcc-pilot", sink)
                cpu = time.process_time() - cpu
                sink.close(True)
                return summary.patients, c.requests, cpu

        t = time.perf_counter()
        patients, requests, cpu = asyncio.run(pull_only())
        pull_s = time.perf_counter() - t
        mappings, identity = load_mappings()
        store = SyncStore(data_dir=work / "data")
        opts = SyncOptions("thal-hcc-pilot", date(2005, 12, 31), "auto", False, work / "runs", mappings, identity)
        t = time.perf_counter()
        summary = run_sync(client, store, opts)
        sync_s = time.perf_counter() - t
        t = time.perf_counter()
        again = run_sync(client, store, opts)  # steady state: the results are on the server, nothing to write
        again_s = time.perf_counter() - t
        store.close()
    return {
        "concurrency": concurrency,
        "patients": patients,
        "pull_seconds": pull_s,
        "pull_patients_per_s": patients / pull_s,
        "pull_requests": requests,
        "cpu_ms_per_request": 1000 * cpu / max(requests, 1),
        "sync_seconds": sync_s,
        "sync_patients_per_s": patients / sync_s,
        "sync_requests": summary.requests,
        "pushed": dict(summary.pushed),
        "phases": {k: round(v, 2) for k, v in summary.seconds.items()},
        "again_seconds": again_s,
        "again_patients_per_s": patients / again_s,
        "again_pushed": dict(again.pushed),
        "again_phases": {k: round(v, 2) for k, v in again.seconds.items()},
        "again_requests": again.requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    data = HERE / ".data" / f"sync-p{args.patients}"
    if not data.exists():
        generate(args.patients, data)
    rows = []
    for concurrency in (1, 8):
        work = Path(tempfile.mkdtemp(prefix="fhiradapter-bench-sync-"))
        try:
            rows.append(measure(data, concurrency, args.latency_ms / 1000, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.patients} patients, {args.latency_ms:.0f} ms added latency per request")
    print(f"{'concurrency':>11} {'pull pat/s':>10} {'requests':>8} {'CPU ms/req':>10} {'sync pat/s':>10} {'sync s':>7}")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['pull_patients_per_s']:>10.1f} {r['pull_requests']:>8} "
            f"{r['cpu_ms_per_request']:>10.2f} {r['sync_patients_per_s']:>10.1f} {r['sync_seconds']:>7.1f}"
        )
    for r in rows:
        print(f"  concurrency {r['concurrency']}: sync phases (s) {r['phases']}")
    ratio_pull = rows[1]["pull_patients_per_s"] / rows[0]["pull_patients_per_s"]
    ratio_sync = rows[1]["sync_patients_per_s"] / rows[0]["sync_patients_per_s"]
    ratio_again = rows[1]["again_patients_per_s"] / rows[0]["again_patients_per_s"]
    for r in rows:
        print(
            f"  concurrency {r['concurrency']}: second sync (nothing to write) {r['again_patients_per_s']:.1f} pat/s, "
            f"{r['again_requests']} requests, phases (s) {r['again_phases']}"
        )
    print(
        f"ratio 8 / 1: pull {ratio_pull:.1f}x, first sync {ratio_sync:.1f}x, second sync {ratio_again:.1f}x "
        "(target >= 6x)"
    )
    out = HERE / ".data" / f"bench-sync-{args.patients}.json"
    out.write_text(
        json.dumps(
            {"rows": rows, "ratio_pull": ratio_pull, "ratio_sync": ratio_sync, "ratio_again": ratio_again}, indent=2
        )
    )


if __name__ == "__main__":
    main()
