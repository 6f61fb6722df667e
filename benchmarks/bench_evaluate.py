"""Throughput and peak memory of ``fhiradapter evaluate`` against a plain orjson parse of the same files.

Each measurement runs in a fresh process, so peak RSS is that run's own (workers included). Figures are
reported as ratios against the orjson baseline measured in the same run on the same machine; absolute
numbers vary too much between machines to mean anything alone. Never run by CI (timing is not a test).

One worker and two are measured (``--workers``), each against the one-core baseline, and two output sets:
``all`` (what ``evaluate`` writes by default) and ``results`` (``--no-writeback --no-report``: results.json,
rejects.ndjson, clinical.ndjson, summary.json). The configurations are measured in rounds, each round running
the baseline and every configuration once.

    python benchmarks/bench_evaluate.py                   # 1k and 10k patients, 1 and 2 workers, both output sets
    python benchmarks/bench_evaluate.py --sizes 1000 --workers 1 --outputs all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from fresh import report, run_fresh  # noqa: E402 - beside this script
from generate import generate  # noqa: E402 - the generator lives beside this script


class Measured(msgspec.Struct, frozen=True):
    """One run: the resources read, its wall time, its workers, its own and its workers' peak RSS, the patients."""

    resources: int
    seconds: float
    peak_mb: float
    workers: int = 1
    peak_worker_mb: float = 0.0
    patients: int = 0


def baseline(argv: list[str]) -> None:
    """Every NDJSON line of the input folder (``argv[0]``) parsed with orjson, in a fresh process."""
    import resource

    import orjson

    files = sorted(Path(argv[0]).glob("*.ndjson"))
    t = time.perf_counter()
    n = 0
    for f in files:
        with f.open("rb") as fh:
            for line in fh:
                orjson.loads(line)
                n += 1
    dt = time.perf_counter() - t
    report(Measured(n, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def evaluate_once(argv: list[str]) -> None:
    """One evaluate run in a fresh process. ``argv``: the input folder, the out folder, the workers (0: the
    default), all or results (the outputs), and the reader (python or duckdb, ``evaluate --reader``)."""
    import resource
    from datetime import date

    from fhiradapter.core.stats import clopper_pearson, kaplan_meier
    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.run.engine import RunRequest
    from fhiradapter.shell.run.local_engine import LocalEngine
    from fhiradapter.shell.run.pipeline import run_evaluate
    from fhiradapter.shell.run.readers import InputLimits

    # Lazy imports (lifelines, scipy) are paid before timing: start-up is not throughput.
    kaplan_meier([1, 2], [True, False])
    clopper_pearson(1, 2)
    mappings, identity = load_mappings()
    workers = int(argv[2]) or None
    t = time.perf_counter()
    everything = argv[3] == "all"
    request = RunRequest(
        inputs=(Path(argv[0]),),
        out=Path(argv[1]),
        as_of=date(2005, 12, 31),
        mappings=mappings,
        mappings_identity=identity,
        engine=LocalEngine(workers),
        report=everything,
        writeback=everything,
        limits=InputLimits(reader=argv[4]),
    )
    summary = run_evaluate(request)
    dt = time.perf_counter() - t
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report(Measured(summary.records_read, dt, own, summary.workers, kids, summary.patients))


def measure(function: str, *args: str) -> Measured:
    return run_fresh("bench_evaluate", function, Measured, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument(
        "--readers",
        nargs="+",
        default=["python"],
        choices=["python", "duckdb"],
        help="pass one's reader(s): evaluate --reader",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument(
        "--outputs",
        choices=["all", "results", "both"],
        default="both",
        help="all: every output (the default of `evaluate`); results: results.json, rejects.ndjson, "
        "clinical.ndjson and summary.json only (--no-writeback --no-report)",
    )
    args = parser.parse_args()
    output_sets = ["all", "results"] if args.outputs == "both" else [args.outputs]
    rows = []
    for size in args.sizes:
        folder = args.data / f"p{size}"
        if not (folder / "Observation.ndjson").exists():
            t = time.perf_counter()
            count = generate(size, folder, seed=7)
            print(f"generated {count} resources for {size} patients in {time.perf_counter() - t:.1f} s")
        # Rounds: each round measures the baseline and every configuration once, so that the machine's drift
        # over minutes (large here) falls on all of them alike; medians are taken over the rounds.
        configs = [(w, o, r) for w in args.workers for o in output_sets for r in args.readers]
        base_runs: list[Measured] = []
        runs: dict[tuple[int, str, str], list[Measured]] = {c: [] for c in configs}
        for _ in range(args.repeat):
            base_runs.append(measure("baseline", str(folder)))
            for workers, outputs, reader in configs:
                out = args.data / f"out-{size}-{outputs}"
                runs[workers, outputs, reader].append(
                    measure("evaluate_once", str(folder), str(out), str(workers), outputs, reader)
                )
        base = sorted(base_runs, key=lambda r: r.seconds)
        b = base[len(base) // 2]
        for (_workers, outputs, reader), mine in runs.items():
            mine.sort(key=lambda r: r.seconds)
            e = mine[len(mine) // 2]
            rows.append(
                {
                    "patients": size,
                    "outputs": outputs,
                    "reader": reader,
                    "resources": e.resources,
                    "workers": e.workers,
                    "orjson_per_s": b.resources / b.seconds,
                    "evaluate_per_s": e.resources / e.seconds,
                    "ratio": b.seconds / e.seconds,
                    "ratios": [round(b.seconds / r.seconds, 3) for r in mine],
                    "orjson_peak_mb": b.peak_mb,
                    "evaluate_peak_mb": max(e.peak_mb, e.peak_worker_mb),
                    "evaluate_parent_mb": e.peak_mb,
                    "evaluate_worker_mb": e.peak_worker_mb,
                }
            )
    print(
        f"{'patients':>8} {'outputs':>8} {'reader':>6} {'resources':>9} {'workers':>7} {'orjson/s':>10} "
        f"{'evaluate/s':>10} {'ratio':>6} {'orjson MB':>9} {'evaluate MB (parent/worker)':>28}"
    )
    for r in rows:
        print(
            f"{r['patients']:>8} {r['outputs']:>8} {r['reader']:>6} {r['resources']:>9} {r['workers']:>7} "
            f"{r['orjson_per_s']:>10,.0f} {r['evaluate_per_s']:>10,.0f} {r['ratio']:>6.3f} "
            f"{r['orjson_peak_mb']:>9.0f} {r['evaluate_parent_mb']:>14.0f} / {r['evaluate_worker_mb']:<12.0f}"
        )
    for workers, outputs, reader in sorted({(r["workers"], r["outputs"], r["reader"]) for r in rows}):
        same = [r for r in rows if (r["workers"], r["outputs"], r["reader"]) == (workers, outputs, reader)]
        if len(same) > 1:
            growth = same[-1]["evaluate_peak_mb"] / same[0]["evaluate_peak_mb"]
            print(
                f"{workers} worker(s), {outputs} outputs, {reader}: peak memory x{growth:.2f} for "
                f"x{same[-1]['patients'] / same[0]['patients']:.0f} input (target: within x1.20)"
            )
    for size in args.sizes:
        for outputs, reader in sorted({(r["outputs"], r["reader"]) for r in rows}):
            by = {
                r["workers"]: r for r in rows if (r["patients"], r["outputs"], r["reader"]) == (size, outputs, reader)
            }
            if 1 in by and 2 in by:
                print(
                    f"{size} patients, {outputs}, {reader}: two workers "
                    f"x{by[2]['ratio'] / by[1]['ratio']:.2f} one worker"
                )
    (args.data / "bench-evaluate.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
