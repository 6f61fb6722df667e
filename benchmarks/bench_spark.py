"""The Spark engine against the local engine on this machine: ``evaluate`` at 10k and 100k patients.

Each run is a fresh process on the seeded synthetic cohort of ``generate.py``: the local engine with its
default workers (two here) and Spark in local mode (``local[2]``, the same two cores), results only
(``--no-writeback --no-report``) and with every output. The figure is Spark's wall time as a ratio to the
local engine's in the same round: the price of Spark's machinery (a JVM, task scheduling, pickling records
between the JVM and Python, the shuffle) on a machine the local engine already uses fully.

It also reports what a cluster estimate needs: the Spark run's read-and-map and evaluate seconds (the work
the executors share) and the driver's part (collecting each patient's result and writing every file), which
no number of executors shortens. ``docs/spark.md`` turns those into an estimate.

    python benchmarks/bench_spark.py                       # 10k and 100k patients, both output sets
    python benchmarks/bench_spark.py --sizes 10000 --outputs results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fresh import report, run_fresh  # noqa: E402 - beside this script
from generate import generate  # noqa: E402 - the generator lives beside this script


class Measured(msgspec.Struct, frozen=True):
    """One evaluate run: its wall time, its phases' (summary.json's ``seconds``), what it read, its peak RSS."""

    seconds: float
    phases: dict[str, float]
    resources: int
    patients: int
    peak_mb: float


def run_once(argv: list[str]) -> None:
    """One evaluate run in a fresh process. ``argv``: the input folder, the out folder, local or spark, all or
    results (the outputs)."""
    import os
    import resource
    from datetime import date

    os.environ["PYSPARK_PYTHON"] = sys.executable
    from fhiradapter.core.stats import clopper_pearson, kaplan_meier
    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.run.engine import RunRequest
    from fhiradapter.shell.run.local_engine import LocalEngine
    from fhiradapter.shell.run.pipeline import run_evaluate
    from fhiradapter.shell.run.spark_engine import SparkEngine

    kaplan_meier([1, 2], [True, False])  # lazy imports (lifelines, scipy) paid before timing
    clopper_pearson(1, 2)
    mappings, identity = load_mappings()
    engine, everything = argv[2], argv[3] == "all"
    t = time.perf_counter()
    request = RunRequest(
        inputs=(Path(argv[0]),),
        out=Path(argv[1]),
        as_of=date(2005, 12, 31),
        mappings=mappings,
        mappings_identity=identity,
        report=everything,
        writeback=everything,
        engine=SparkEngine("local[2]") if engine == "spark" else LocalEngine(),
    )
    summary = run_evaluate(request)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(Measured(dt, summary.seconds, summary.records_read, summary.patients, peak))


def measure(*args: str) -> Measured:
    return run_fresh("bench_spark", "run_once", Measured, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--outputs", choices=["all", "results", "both"], default="both")
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    args = parser.parse_args()
    output_sets = ["results", "all"] if args.outputs == "both" else [args.outputs]
    rows = []
    for size in args.sizes:
        folder = args.data / f"p{size}"
        if not (folder / "Observation.ndjson").exists():
            t = time.perf_counter()
            count = generate(size, folder, seed=7)
            print(f"generated {count} resources for {size} patients in {time.perf_counter() - t:.1f} s", flush=True)
        for outputs in output_sets:
            local = measure(str(folder), str(args.data / f"out-local-{size}"), "local", outputs)
            spark = measure(str(folder), str(args.data / f"out-spark-{size}"), "spark", outputs)
            assert local.patients == spark.patients == size
            phases = spark.phases
            row = {
                "patients": size,
                "resources": local.resources,
                "outputs": outputs,
                "local_s": round(local.seconds, 1),
                "spark_s": round(spark.seconds, 1),
                "ratio": round(spark.seconds / local.seconds, 2),
                "spark_read_map_s": phases.get("read_and_map"),
                "spark_evaluate_s": phases.get("evaluate"),
                "driver_write_s": round(sum(phases.get(k, 0) for k in ("cohort_statistics", "write", "report")), 1),
                "local_peak_mb": round(local.peak_mb),
                "spark_driver_peak_mb": round(spark.peak_mb),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.data / "bench-spark.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
