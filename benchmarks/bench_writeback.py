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

import msgspec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from fresh import report, run_fresh  # noqa: E402 - beside this script
from generate import generate  # noqa: E402 - the generator lives beside this script

BASE = "9971da7"  # the last commit whose write-back was built as dicts


class Measured(msgspec.Struct, frozen=True):
    """One way's run: the entries built, their bytes, the seconds building them, the patients, its peak RSS."""

    entries: int
    bytes: int
    seconds: float
    patients: int
    peak_mb: float


def evaluate_once(argv: list[str]) -> None:
    """Evaluate the cohort once, one worker, results only. ``argv``: the input folder, the out folder."""
    from datetime import date

    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.run.engine import RunRequest
    from fhiradapter.shell.run.local_engine import LocalEngine
    from fhiradapter.shell.run.pipeline import run_evaluate

    mappings, identity = load_mappings()
    request = RunRequest(
        inputs=(Path(argv[0]),),
        out=Path(argv[1]),
        as_of=date(2005, 12, 31),
        mappings=mappings,
        mappings_identity=identity,
        engine=LocalEngine(1),
        report=False,
        writeback=False,
    )
    summary = run_evaluate(request)
    report(Measured(0, 0, sum(summary.seconds.values()), summary.patients, 0))


def way_once(argv: list[str]) -> None:
    """One way, in a fresh process. ``argv``: the way (load, dicts, structs, r4b), the results folder, the commit
    of the dict-building write-back, the repository (to read that commit)."""
    import resource
    import types
    from collections.abc import Callable, Iterable

    import orjson

    from fhiradapter.core.protocol import StudyKey
    from fhiradapter.core.readback import decode_subject, split_whole
    from fhiradapter.core.results import PatientResult, TimedRunSummary

    way, results, base, root = argv[0], Path(argv[1]), argv[2], argv[3]
    _header, raw_subjects, _cohort = split_whole((results / "results.json").read_bytes())
    subjects = [decode_subject(raw) for raw in raw_subjects]
    del raw_subjects
    protocol = msgspec.json.decode((results / "summary.json").read_bytes(), type=TimedRunSummary).protocol.id

    def nothing(_subject: PatientResult) -> Iterable[bytes]:  # load: builds nothing
        return ()

    build: Callable[[PatientResult], Iterable[bytes]] = nothing
    if way in ("dicts", "r4b"):
        # The old write-back, run from its source: untyped to mypy (a module made at run time).
        old = sys.modules["writeback_dicts"] = types.ModuleType("writeback_dicts")  # dataclasses look it up
        source = subprocess.run(
            ["git", "show", f"{base}:fhiradapter/core/writeback.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout
        exec(compile(source, "writeback_dicts", "exec"), old.__dict__)  # noqa: S102 - the project's own history
        old_ctx = old.WritebackContext(protocol, StudyKey("study-1"))

        def dicts(subject: PatientResult) -> Iterable[bytes]:
            for entry in old.plan_patient(subject, [], None, old_ctx):
                yield orjson.dumps(old.bundle_entry(entry))

        build = dicts
        if way == "r4b":
            from fhir.resources.R4B.bundle import BundleEntry

            BundleEntry.model_validate({"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Basic", "code": {}}})

            def r4b(subject: PatientResult) -> Iterable[bytes]:
                for entry in old.plan_patient(subject, [], None, old_ctx):
                    model = BundleEntry.model_validate(old.bundle_entry(entry))
                    yield model.model_dump_json(exclude_none=True).encode()

            build = r4b
    elif way == "structs":
        from fhiradapter.core import writeback
        from fhiradapter.core.fhir_out import encode

        ctx = writeback.WritebackContext(protocol, StudyKey("study-1"))

        def structs(subject: PatientResult) -> Iterable[bytes]:
            for entry in writeback.plan_patient(subject, [], None, ctx):
                bundled = writeback.bundle_entry(entry)
                if bundled is not None:  # None: unchanged; every entry is a create here
                    yield encode(bundled)

        build = structs

    entries = size = 0  # the bytes are counted, not kept: writeback.json is streamed to disk
    t = time.perf_counter()
    for subject in subjects:
        for written in build(subject):
            entries += 1
            size += len(written)
    dt = time.perf_counter() - t
    report(Measured(entries, size, dt, len(subjects), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


WAYS = ("load", "dicts", "structs", "r4b")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(*args: str) -> Measured:
    return run_fresh("bench_writeback", "way_once", Measured, *args)


def results_of(size: int, data: Path) -> Path:
    """The results of the generated cohort of ``size`` patients (evaluated once, then reused)."""
    folder = data / f"p{size}"
    out = data / f"wb-results-{size}"
    if not (out / "summary.json").exists():
        if not (folder / "Observation.ndjson").exists():
            generate(size, folder, seed=7)
        t = time.perf_counter()
        run_fresh("bench_writeback", "evaluate_once", Measured, str(folder), str(out))
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
    runs: dict[str, list[Measured]] = {way: [] for way in WAYS}
    for n in range(args.rounds):
        for way in WAYS:
            if way != "r4b" or n < args.r4b_rounds:  # R4B takes minutes a round
                runs[way].append(measure(way, str(results), BASE, str(ROOT)))
    load_mb = median([r.peak_mb for r in runs["load"]])
    structs = runs["structs"]
    print(f"{structs[0].patients} patients, {structs[0].entries} entries, {args.rounds} round(s)")
    print(f"{'way':>8} {'seconds':>8} {'x structs':>9} {'entries/s':>10} {'peak MB':>8} {'over load':>9} {'MB out':>7}")
    summary = {}
    for way in WAYS[1:]:
        mine = runs[way]
        ratio = median([m.seconds / s.seconds for m, s in zip(mine, structs, strict=False)])
        seconds, peak = median([m.seconds for m in mine]), median([m.peak_mb for m in mine])
        summary[way] = {"seconds": seconds, "ratio": ratio, "peak_mb": peak, "over_load_mb": peak - load_mb}
        print(
            f"{way:>8} {seconds:>8.2f} {ratio:>9.2f} {mine[0].entries / seconds:>10,.0f} {peak:>8.0f} "
            f"{peak - load_mb:>9.0f} {mine[0].bytes / 1e6:>7.1f}"
        )
    (args.data / "bench-writeback.json").write_text(json.dumps({"load_mb": load_mb, **summary}, indent=1))


if __name__ == "__main__":
    main()
