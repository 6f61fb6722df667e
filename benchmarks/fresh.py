"""One function of a benchmark run in a fresh process (its own timing and peak RSS), and what it reports, typed.

The measured code is a plain function of its benchmark script, so that mypy checks it like any other code
(code handed to ``python -c`` as a string is not checked at all: the typed redesign broke four benchmarks
unnoticed that way). The child prints one msgspec Struct as its last line of output; the parent decodes it
into that Struct's type, so that a field renamed or retyped on either side fails there, not as a ``KeyError``
in a table.

The child process imports the benchmark script (and ``generate.py`` beside it) before it calls the function;
each measured function imports what it measures itself, so that a child's peak RSS holds only what that child
needs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import msgspec

HERE = Path(__file__).resolve().parent

Report = TypeVar("Report", bound=msgspec.Struct)


def run_fresh(module: str, function: str, report: type[Report], *args: str) -> Report:
    """``module.function(args)`` (a script beside this one) in a new Python process; what it ``report``-ed."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import {module}; {module}.{function}(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{module}.{function}{args} failed:\n{done.stderr[-4000:]}")
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=report)


def report(value: msgspec.Struct) -> None:
    """The child's result, as the last line of its output (what ``run_fresh`` reads)."""
    print(msgspec.json.encode(value).decode(), flush=True)
