"""Peak memory of ``fhiradapter evaluate`` on one cohort laid out two ways: NDJSON files, and one single-line Bundle.

The same generated cohort (benchmarks/generate.py) is written as NDJSON files (the baseline: read line by line)
and as a single-line ``collection`` Bundle with every reference by ``urn:uuid``. Each layout is evaluated in a
fresh process with one worker; the peak resident memory of that process is reported, and the Bundle's as a
ratio to the NDJSON run's in the same run. Never run by CI (measurements are not tests).

    python benchmarks/bench_bundle_memory.py                 # 2,000 patients
    python benchmarks/bench_bundle_memory.py --patients 5000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
sys.path.insert(0, str(HERE))

from generate import generate  # noqa: E402 - the generator lives beside this script

MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True)
if done.returncode:
    sys.stderr.write(done.stderr.decode()[-2000:])
    raise SystemExit(done.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_kib(src: Path, out: Path) -> int:
    """Peak RSS (KiB) of one evaluate run, in its own process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", "from fhiradapter.cli import run; run()", "evaluate", str(src)]
    command += ["--as-of", "2005-03-31", "--out", str(out), "--workers", "1", "--no-report", "--no-progress"]
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def as_bundle(ndjson: Path, target: Path) -> int:
    """Write the NDJSON folder's resources as one single-line Bundle, references by urn:uuid; its size."""
    resources = [orjson.loads(line) for f in sorted(ndjson.glob("*.ndjson")) for line in f.open("rb") if line.strip()]
    urns = {
        f"{r['resourceType']}/{r['id']}": f"urn:uuid:{n:08d}-0000-4000-8000-000000000000"
        for n, r in enumerate(resources)
    }

    def relink(value: object) -> object:
        if isinstance(value, dict):
            return {
                k: urns.get(v, v) if k == "reference" and isinstance(v, str) else relink(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [relink(v) for v in value]
        return value

    entries = [{"fullUrl": urns[f"{r['resourceType']}/{r['id']}"], "resource": relink(r)} for r in resources]
    target.mkdir(parents=True, exist_ok=True)
    path = target / "cohort.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2000)
    args = parser.parse_args()
    ndjson = DATA / f"bundle-memory-{args.patients}" / "ndjson"
    if not ndjson.is_dir():
        generate(args.patients, ndjson)
    bundle = ndjson.parent / "bundle"
    size = (
        as_bundle(ndjson, bundle) if not (bundle / "cohort.json").exists() else (bundle / "cohort.json").stat().st_size
    )
    base = peak_kib(ndjson, ndjson.parent / "out-ndjson")
    single = peak_kib(bundle, ndjson.parent / "out-bundle")
    same = (
        json.loads((ndjson.parent / "out-ndjson" / "results.json").read_text())["cohort"]
        == json.loads((ndjson.parent / "out-bundle" / "results.json").read_text())["cohort"]
    )
    ndjson_mb = sum(f.stat().st_size for f in ndjson.glob("*.ndjson")) / 1e6
    print(f"{args.patients} patients: NDJSON {ndjson_mb:.0f} MB, single-line Bundle {size / 1e6:.0f} MB")
    print(f"  peak RSS, NDJSON files:      {base / 1024:7.0f} MB")
    print(f"  peak RSS, one Bundle:        {single / 1024:7.0f} MB  ({single / base:.2f}x the NDJSON run)")
    print(f"  same cohort results: {same}")


if __name__ == "__main__":
    main()
