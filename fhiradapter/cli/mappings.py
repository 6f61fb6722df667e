"""``fhiradapter mappings``: a site's own mappings folder (``init``) and which folder a run would use (``show``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fhiradapter.cli.common import MAPPINGS_ENV, guard, mappings_line, mappings_option, warn_unused_mappings


@click.group("mappings", short_help="Make a site's own mappings folder; show which one is used.")
def mappings_cmd() -> None:
    """A site's mappings: the codes, units and protocol parameters fhiradapter runs on (docs/mappings.md)."""


@mappings_cmd.command("init")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
def init_cmd(folder: Path) -> None:
    """Copy the shipped mappings into FOLDER, a site's own copy to edit.

    Then point every command at it, with --mappings FOLDER or, once for all, the environment variable
    FHIRADAPTER_MAPPINGS=FOLDER. Nothing is overwritten: FOLDER must not hold mappings files yet.

    \b
    Example:
      fhiradapter mappings init /etc/fhiradapter/mappings
      export FHIRADAPTER_MAPPINGS=/etc/fhiradapter/mappings
    """
    from fhiradapter.shell.common.mappings_io import init_site_mappings, load_mappings  # noqa: PLC0415

    with guard():
        written = init_site_mappings(folder)
        load_mappings(folder)  # the copy reads as the original does
        click.echo(f"Wrote {len(written)} file(s) to {folder}: {', '.join(p.name for p in written)}.")
        click.echo(
            "Edit them (docs/mappings.md says what each holds), then run every command with "
            f"--mappings {folder}, or set {MAPPINGS_ENV}={folder.resolve()}"
        )


@mappings_cmd.command("show")
@mappings_option("protocol.toml, codes.toml and units.toml to check")
def show_cmd(mappings_dir: Path | None) -> None:
    """Say which mappings folder a run would use, check that it reads, and name its study."""
    from fhiradapter.shell.common.mappings_io import load_mappings  # noqa: PLC0415

    with guard():
        mappings, identity = load_mappings(mappings_dir)
        source = "--mappings" if mappings_dir and os.environ.get(MAPPINGS_ENV) != str(mappings_dir) else MAPPINGS_ENV
        click.echo(mappings_line(Path(identity.mappings_dir)))
        warn_unused_mappings(Path(identity.mappings_dir))
        if mappings_dir:
            click.echo(f"  (from {source})")
        click.echo(f"  protocol {identity.id} {identity.version}; study {mappings.study_ref}")
        click.echo(f"  sha256 of protocol.toml, codes.toml, units.toml: {identity.sha256}")
