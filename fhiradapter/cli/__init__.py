"""The command line: the ``fhiradapter`` group and its commands, one module per command group.

Only this package turns exceptions into messages and exit codes (``common.guard``, ``fhiradapter.errors``).
"""

from __future__ import annotations

import signal

import click

from fhiradapter import __version__
from fhiradapter.cli.approve import approve_cmd
from fhiradapter.cli.evaluate import evaluate
from fhiradapter.cli.export import export_cmd
from fhiradapter.cli.mappings import mappings_cmd
from fhiradapter.cli.pull import pull_cmd
from fhiradapter.cli.push import push_cmd
from fhiradapter.cli.study import study_cmd
from fhiradapter.cli.sync import runs_cmd, sync_cmd
from fhiradapter.cli.undo import undo_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhiradapter", message="%(prog)s %(version)s")
def main() -> None:
    """Apply the thalidomide-HCC pilot protocol to FHIR R4 data and report the results."""


for command in (
    evaluate,
    approve_cmd,
    export_cmd,
    pull_cmd,
    push_cmd,
    sync_cmd,
    runs_cmd,
    undo_cmd,
    study_cmd,
    mappings_cmd,
):
    main.add_command(command)


def run() -> None:
    """The ``fhiradapter`` program: the commands, then a quiet end. A Ctrl-C that arrives while the interpreter
    shuts down is held off, so that the exit code stays the one the command chose (130 after a Ctrl-C)."""
    try:
        main()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


if __name__ == "__main__":  # pragma: no cover
    run()
