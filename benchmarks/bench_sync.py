"""Patients synced per second against a local FHIR server with 50 ms added latency, at concurrency 1 and 8.

For each concurrency a fresh sekmet-fhir server (started on 127.0.0.1 and stopped by PID, as the tests do) is
loaded with the seeded synthetic cohort of ``generate.py``. Then, in this process, through a transport that
sleeps 50 ms before every request (what a hospital server across a network costs):

- a ``pull`` of the whole study;
- three ``sync`` runs on one store, as a scheduled job would see them: the first (pulls everything, creates
  every result), the second (reads back the first run's own writes, writes nothing), and a scheduled one after
  an AFP value was changed for every 10th patient (pulls what changed, updates the results it changes).

Reported: patients per second for each, the ratio between the two concurrencies (target >= 6x), the phases
of each run, client CPU per request, and the server's own CPU over the pull and each sync, from /proc. The
test server is one Python process whose database work is serialised by one lock and the rest by the GIL, so
it uses about one core at most: CPU seconds near a run's seconds mean the server, not the client, sets the
pace, and concurrency-1 seconds over the server's CPU seconds at concurrency 8 is about the most any client
could reach against it (only SQLite work overlapping another request's Python could exceed it). Runs are 2 s
apart (outside the timing) and the watermark overlap is 1 s instead of the default 2 minutes, so a run
does not re-read what the load before it wrote: the local server commits each request before answering, so
no write is in flight longer than that. Lifelines and scipy are imported before timing: start-up is not
throughput. Never run by CI.

Patients are searched one by one by default (``--patients-per-search 1``), so that the ratio measures what
concurrency alone gives; ``--patients-per-search auto`` measures what ``pull`` and ``sync`` do by default (20
patients per search in the two incremental runs), which makes far fewer requests and leaves concurrency
less to overlap.

    python benchmarks/bench_sync.py                 # 100 patients, as in the README
    python benchmarks/bench_sync.py --patients 200 --latency-ms 50
    python benchmarks/bench_sync.py --patients 100 --patients-per-search 20
    python benchmarks/bench_sync.py --patients-per-search auto   # as pull and sync choose by default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from fhir_server import load_input, sekmet_server  # noqa: E402 - the tests' server helpers
from generate import generate  # noqa: E402

from fhiradapter.core.approval import StandingRule  # noqa: E402
from fhiradapter.core.stats import clopper_pearson, kaplan_meier  # noqa: E402
from fhiradapter.shell.common.mappings_io import load_mappings  # noqa: E402
from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient, tls_context  # noqa: E402
from fhiradapter.shell.server.pull import pull_into  # noqa: E402
from fhiradapter.shell.server.pull_folder import NdjsonSink  # noqa: E402
from fhiradapter.shell.server.store import SyncStore  # noqa: E402
from fhiradapter.shell.server.sync import SyncOptions, run_sync  # noqa: E402


class Latency(httpx.AsyncBaseTransport):
    """Adds a fixed delay before each request, as a network hop to a hospital server would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = httpx.AsyncHTTPTransport(verify=tls_context(True))  # as FhirClient's own transport would

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.seconds)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


RUNS = [
    ("first", "first sync (pulls everything, creates every result)"),
    ("settle", "second sync (reads back the first run's writes, writes nothing)"),
    ("scheduled", "scheduled sync (one AFP changed for every 10th patient)"),
]
WRITE_EVERYTHING = StandingRule(signed_by="bench_sync", role="benchmark", signed_on="2026-12-07", allow=("*:*",))
OVERLAP = timedelta(seconds=1)  # the local server commits synchronously: no write is in flight for a second


def _change_labs(base: str, patients: int, every: int) -> int:
    """A scheduled run's input: one AFP value changed for every ``every``-th patient (PUT, no added latency)."""
    changed = 0
    with httpx.Client(base_url=base + "/", timeout=30) as http:
        for n in range(0, patients, every):
            path = f"Observation/bench-{n:06d}-afp-a1"
            resource = http.get(path).json()
            resource["valueQuantity"]["value"] = round(resource["valueQuantity"]["value"] * 1.5, 1)
            resource.pop("meta", None)
            assert http.put(path, json=resource).status_code == 200
            changed += 1
    return changed


def server_cpu_s(config: Path) -> float | None:
    """CPU seconds used so far by the server process started with ``config`` (Linux /proc), else None."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(config).encode() not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return None


def _sync(
    client: Callable[[], FhirClient], store: SyncStore, opts: SyncOptions, patients: int, config: Path
) -> dict[str, Any]:
    time.sleep(OVERLAP.total_seconds() + 1)  # outside the timing: the previous run's writes fall before its watermark
    server_cpu = server_cpu_s(config)
    t = time.perf_counter()
    summary = run_sync(client(), store, opts)
    seconds = time.perf_counter() - t
    server_after = server_cpu_s(config)
    return {
        "seconds": seconds,
        "patients_per_s": patients / seconds,
        # the server's own CPU over the run: near ``seconds`` means the (single-process) server is the bound
        "server_cpu_s": None if server_cpu is None or server_after is None else server_after - server_cpu,
        "requests": summary.requests,
        "pulled": sum(summary.pulled.values()),
        "pushed": dict(summary.pushed),
        "phases": {k: round(v, 2) for k, v in summary.seconds.items()},
    }


def measure(folder: Path, concurrency: int, latency: float, work: Path, per_search: int | None = 1) -> dict[str, Any]:
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
                summary = await pull_into(c, cap, "thal-hcc-pilot", sink, per_search=per_search)
                cpu = time.process_time() - cpu
                sink.close(True)
                return summary.patients, c.requests, cpu

        config = work / "sekmet.yaml"  # names the server's process (see fhir_server.sekmet_server)
        server_before = server_cpu_s(config)
        t = time.perf_counter()
        patients, requests, cpu = asyncio.run(pull_only())
        pull_s = time.perf_counter() - t
        server_after = server_cpu_s(config)
        mappings, identity = load_mappings()
        store = SyncStore(data_dir=work / "data")
        opts = SyncOptions(
            study="thal-hcc-pilot",
            as_of=date(2005, 12, 31),
            since="auto",
            dry_run=False,
            work_dir=work / "runs",
            mappings=mappings,
            mappings_identity=identity,
            overlap=OVERLAP,
            per_search=per_search,
            # Every change written unreviewed, as before review and approval existed: without a standing rule
            # a scheduled sync holds every change for a person's approval, and the runs would push nothing.
            standing_rule=WRITE_EVERYTHING,
        )
        first = _sync(client, store, opts, patients, config)  # everything pulled, every result created
        settle = _sync(client, store, opts, patients, config)  # reads back the first run's own writes; writes nothing
        changed = _change_labs(base, patients, every=10)
        scheduled = _sync(client, store, opts, patients, config)  # what changed since the last run: the steady state
        store.close()
    return {
        "concurrency": concurrency,
        "patients": patients,
        "pull_seconds": pull_s,
        "pull_patients_per_s": patients / pull_s,
        "pull_requests": requests,
        "pull_server_cpu_s": None if server_before is None or server_after is None else server_after - server_before,
        "cpu_ms_per_request": 1000 * cpu / max(requests, 1),
        "first": first,
        "settle": settle,
        "changed_observations": changed,
        "scheduled": scheduled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument(
        "--patients-per-search",
        type=lambda v: None if v == "auto" else int(v),
        default=1,
        help="as the pull and sync option (auto: what they do by default); 1 measures concurrency alone",
    )
    args = parser.parse_args()
    data = HERE / ".data" / f"sync-p{args.patients}"
    if not data.exists():
        generate(args.patients, data)
    kaplan_meier([1, 2], [True, False])  # lazy imports (lifelines, scipy) paid before any timing
    clopper_pearson(1, 2)
    rows = []
    for concurrency in (1, 8):
        work = Path(tempfile.mkdtemp(prefix="fhiradapter-bench-sync-"))
        try:
            rows.append(measure(data, concurrency, args.latency_ms / 1000, work, args.patients_per_search))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.patients} patients, {args.latency_ms:.0f} ms added latency per request, "
        f"{args.patients_per_search or 'auto'} patient(s) per search"
    )
    print(f"{'concurrency':>11} {'pull pat/s':>10} {'requests':>8} {'CPU ms/req':>10}")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['pull_patients_per_s']:>10.1f} {r['pull_requests']:>8} "
            f"{r['cpu_ms_per_request']:>10.2f}"
        )
    ratios = {"pull": rows[1]["pull_patients_per_s"] / rows[0]["pull_patients_per_s"]}
    # The server uses about one core (one lock on its database, the GIL): a run at concurrency 8 takes at least
    # about the server's own CPU for it, so concurrency-1 seconds over that CPU bound the ratio.
    ceilings = {"pull": _ceiling(rows[0]["pull_seconds"], rows[1]["pull_server_cpu_s"])}
    for run, label in RUNS:
        for r in rows:
            x = r[run]
            server = "?" if x["server_cpu_s"] is None else f"{x['server_cpu_s']:.1f} s"
            print(
                f"  {label}, concurrency {r['concurrency']}: {x['patients_per_s']:.1f} pat/s in {x['seconds']:.1f} s, "
                f"{x['requests']} requests, {x['pulled']} pulled, pushed {x['pushed']}, phases (s) {x['phases']}, "
                f"server CPU {server}"
            )
        ratios[run] = rows[1][run]["patients_per_s"] / rows[0][run]["patients_per_s"]
        ceilings[run] = _ceiling(rows[0][run]["seconds"], rows[1][run]["server_cpu_s"])
    print("ratio 8 / 1: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()) + " (target >= 6x)")
    print(
        "the most this server allows (seconds at concurrency 1 / its CPU seconds at 8): "
        + ", ".join(f"{k} {'?' if v is None else f'{v:.1f}x'}" for k, v in ceilings.items())
    )
    out = HERE / ".data" / f"bench-sync-{args.patients}-{args.patients_per_search or 'auto'}.json"
    out.write_text(json.dumps({"rows": rows, "ratios": ratios, "ceilings": ceilings}, indent=2))


def _ceiling(seconds_at_1: float, server_cpu_at_8: float | None) -> float | None:
    return None if not server_cpu_at_8 else seconds_at_1 / server_cpu_at_8


if __name__ == "__main__":
    main()
