"""What every command shares: turning errors into one line and an exit code, the as-of date, the mappings
folder (option, environment variable, which one a run used), the extras' install hints, progress bars and
counts in words."""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, ClassVar

import click

from fhiradapter.errors import AdapterError, ConfigError, ExitCode

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

Command = Callable[..., None]  # a click command's function, before click.command makes it one


def parse_as_of(value: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ConfigError(f"--as-of must be a date as YYYY-MM-DD, got {value!r}")
    try:
        cutoff = date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of {value} is no calendar date (that month has no such day)") from None
    if cutoff > datetime.now(UTC).date():  # a typo (2050 for 2005) reads records a real cut-off leaves out: say so
        click.echo(f"warning: --as-of {value} is after today: is it the cut-off you meant?", err=True)
    return cutoff


MAPPINGS_ENV = "FHIRADAPTER_MAPPINGS"  # = fhiradapter.shell.common.mappings_io.ENV_VAR (kept here: --help stays fast)


def mappings_option(what: str) -> Callable[[Command], Command]:
    """``--mappings DIR``, also from ``$FHIRADAPTER_MAPPINGS``: a site's own mappings folder for every command."""
    return click.option(
        "--mappings",
        "mappings_dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        envvar=MAPPINGS_ENV,
        show_envvar=True,
        help=f"Folder with {what} [default: the mappings shipped with fhiradapter; `fhiradapter mappings init DIR` "
        "makes a site's own copy].",
    )


def mappings_line(used: Path) -> str:
    """``Mappings: DIR``, the line every run prints, saying which mappings folder it used."""
    from fhiradapter.shell.common.mappings_io import default_mappings_dir  # noqa: PLC0415

    shipped = used.resolve() == default_mappings_dir().resolve()
    return f"Mappings: {used}{' (shipped with fhiradapter)' if shipped else ''}"


def warn_unused_mappings(used: Path) -> None:
    """Warn (stderr) when ./mappings differs from the folder the run uses: edits there would not be read."""
    from fhiradapter.shell.common.mappings_io import differing_local_mappings  # noqa: PLC0415

    local = differing_local_mappings(used, Path())  # relative: the message names ./mappings as the user sees it
    if local is not None:
        click.echo(
            f"warning: {local} differs from the mappings this run uses ({used}), and is not read. To use it, "
            f"add --mappings {local} or set {MAPPINGS_ENV}={local.resolve()}",
            err=True,
        )


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A number of bytes: ``67108864``, ``64MiB``, ``512KiB``, ``1GiB`` (also kB, MB, GB: powers of 1000)."""

    name = "SIZE"
    UNITS: ClassVar[dict[str, int]] = {
        "": 1,
        "b": 1,
        "kib": 1 << 10,
        "mib": 1 << 20,
        "gib": 1 << 30,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
    }

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in self.UNITS:
            self.fail(f"{value!r} is not a size such as 67108864, 64MiB or 1GiB", param, ctx)
        size = int(match.group(1)) * self.UNITS[unit]
        if size < 1024:
            self.fail(f"{value!r} is under 1 KiB: no FHIR resource is that small", param, ctx)
        return size


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT

PULL_INTERRUPTED = (
    "the NDJSON files of an unfinished pull are not put in place (a Bulk export resumes when the same command is "
    "run again)"
)
PUSH_INTERRUPTED = (
    "parts already sent may have been applied, each whole or not at all; pushing the same file again creates no "
    "duplicates, but its updates already applied are refused as conflicts (412): pull and evaluate again, then "
    "push the new writeback.json"
)
SYNC_INTERRUPTED = (
    "the watermark was not advanced and results already written are found again by their identifiers, so "
    "running the same command again is safe"
)


# Packages a plain `pip install fhiradapter` leaves out, by the extra that brings them (pyproject.toml).
EXTRAS = {"sqlalchemy": "registry", "alembic": "registry", "psycopg": "postgres", "pyarrow": "parquet"}


def _stopping(signum: int, frame: FrameType | None) -> None:
    """SIGINT after the first, while the command stops: it is stopping already."""


@contextmanager
def guard(interrupted: str = "run the same command again") -> Iterator[None]:
    """Turn the adapter's errors into a one-line message and its exit code; hide unexpected errors' text.

    ``interrupted``: what a Ctrl-C leaves behind and what to do next, said before exiting with 130.
    """
    try:
        yield
    except KeyboardInterrupt:
        # A second Ctrl-C while stopping: no traceback, one message. A Python-level handler, not SIG_IGN, which
        # the processes started later would inherit.
        signal.signal(signal.SIGINT, _stopping)
        click.echo(f"interrupted (Ctrl-C): {interrupted}", err=True)
        sys.exit(INTERRUPTED)
    except AdapterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(package)
        if extra is None:
            raise
        click.echo(
            f"error: this needs {package}, which comes with an extra: pip install 'fhiradapter[{extra}]'", err=True
        )
        sys.exit(int(ExitCode.CONFIG))
    except BrokenPipeError:  # output piped into `head`, which has read enough: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, and no error at exit
        sys.exit(int(ExitCode.OK))
    except Exception as exc:
        if os.environ.get("FHIRADAPTER_DEBUG"):
            raise
        # The message of an unexpected error may quote patient data: show only its type.
        click.echo(
            f"error: unexpected internal error ({type(exc).__name__}); set FHIRADAPTER_DEBUG=1 "
            "for the traceback and please report it",
            err=True,
        )
        sys.exit(int(ExitCode.FAILURE))


EXPORT_TO_HELP = (
    "sqlite:///FILE.db, postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or ~/.pgpass, never the URL), "
    "csv:FOLDER or parquet:FOLDER."
)
KEY_HELP = "File holding the pseudonymisation secret (>= 32 bytes, mode 600) [default: $FHIRADAPTER_PSEUDONYM_KEY]."


PUSH_OUTCOMES = ("created", "updated", "unchanged", "conflict", "error", "not applied", "unknown")


class PhaseBars:
    """One progress bar per phase of a run (pull, then push), each closed when the next one opens."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: ProgressBar[int] | None = None

    def open(self, label: str, length: int) -> ProgressBar[int]:
        self.close()
        self.bar = click.progressbar(length=max(length, 1), label=label, file=sys.stderr, hidden=not self.show)
        self.bar.__enter__()
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def counts_text(counts: Mapping[str, int], first: tuple[str, ...]) -> str:
    """``create 92, update 13, unchanged 1``: the usual keys in reading order, then any other, zeros left out."""
    keys = [k for k in first if counts.get(k)] + sorted(k for k in counts if k not in first and counts[k])
    return ", ".join(f"{k} {counts[k]}" for k in keys)


def searches_text(per_search: int | None, split: int) -> str:
    """`` (20 patient(s) per search; 1 paged on, so read patient by patient)``, or nothing for a Bulk pull."""
    if per_search is None:
        return ""
    paged_on = f"; {split} paged on, so read patient by patient" if split else ""
    return f" ({per_search} patient(s) per search{paged_on})"


def gathered(
    name: str, build: Callable[..., object], options: Sequence[Callable[[Command], Command]]
) -> Callable[[Command], Command]:
    """Apply ``options`` to a command, and hand it their values as one typed value: ``name=build(**values)``.

    Click gives each option as a keyword argument; gathered this way, a command takes a few typed values rather
    than a long list of loose ones, and a value that travels on (the server options to the client) keeps its
    type. ``build`` runs when the command does, so it may import what ``--help`` need not.
    """

    def decorate(fn: Command) -> Command:
        @functools.wraps(fn)
        def command(*args: object, **values: object) -> None:
            own = {key: values.pop(key) for key in names}
            fn(*args, **values, **{name: build(**own)})

        params: list[click.Parameter] = command.__dict__.setdefault("__click_params__", [])
        before = len(params)
        for option in reversed(options):
            option(command)
        names = [param.name for param in params[before:] if param.name]
        return command

    return decorate


def command_options(build: Callable[..., object]) -> Callable[[Command], Command]:
    """The command's remaining options (those not gathered already) as one typed value: the command takes
    ``options=build(**values)``; the decorator closest to the function."""

    def decorate(fn: Command) -> Command:
        @functools.wraps(fn)
        def command(**values: object) -> None:
            fn(build(**values))

        return command

    return decorate


@dataclass(frozen=True)
class ExportOptions:
    """--export-to, --export-format, --pseudonymise and --key-file: where a command exports its results after."""

    to: str | None = None
    format: str = "tables"
    pseudonymise: bool = False
    key_file: Path | None = None


def export_options(fn: Command) -> Command:
    """--export-to, --export-format, --pseudonymise and --key-file, as one ``export: ExportOptions``."""
    options = [
        click.option(
            "--export-to", "to", metavar="URL", default=None, help="Then export the results: " + EXPORT_TO_HELP
        ),
        click.option(
            "--export-format",
            "format",
            type=click.Choice(["tables", "sdtm"]),
            default="tables",
            show_default=True,
            help="With --export-to: registry tables, or SDTM datasets (files only).",
        ),
        click.option(
            "--pseudonymise",
            is_flag=True,
            help="With --export-to: keyed-hash subject keys, ages instead of birth dates, no free text.",
        ),
        click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help=KEY_HELP),
    ]
    return gathered("export", ExportOptions, options)(fn)
