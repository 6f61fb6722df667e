"""``fhiradapter mappings``: a site's own mappings folder (``init``) and which folder a run would use (``show``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import MAPPINGS_ENV, guard, mappings_line, mappings_option, warn_unused_mappings
from fhiradapter.cli.server_options import open_server_client, server_options
from fhiradapter.core.json_types import JsonObject

if TYPE_CHECKING:
    from fhiradapter.shell.server.connection import ServerOptions


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


@mappings_cmd.command("conceptmap")
@server_options
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--url", "canonical", metavar="URL", help="The ConceptMap's canonical url.")
@click.option("--id", "rid", metavar="ID", help="The ConceptMap's id on the server (instead of --url).")
def conceptmap_cmd(folder: Path, canonical: str | None, rid: str | None, server: ServerOptions) -> None:
    """Copy a ConceptMap from the site's terminology server (a FHIR R4 server) into its mappings FOLDER.

    The local codes it maps to a code of a codes.toml list (equivalence equivalent, equal, wider or subsumes)
    then count as that list's codes, for the rules and the published study alike (docs/mappings.md). The copy,
    conceptmap-<id>.json, is what runs read (its bytes join the mappings' sha256): run this again after the
    map changes on the server.

    \b
    Example:
      fhiradapter mappings conceptmap --server https://tx.hospital.org/fhir \\
          --url https://tx.hospital.org/fhir/ConceptMap/lab-local-to-loinc /etc/fhiradapter/mappings
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter.shell.common.mappings_io import load_mappings, save_concept_map  # noqa: PLC0415
    from fhiradapter.shell.server.concept_maps import fetch_concept_map  # noqa: PLC0415

    with guard():
        if (canonical is None) == (rid is None):
            raise click.UsageError("name the ConceptMap by --url or by --id (one of them)")

        async def fetch() -> JsonObject:
            client = await open_server_client(server)
            async with client:
                return await fetch_concept_map(client, url=canonical, rid=rid)

        resource = asyncio.run(fetch())
        where = f"{server.server} ConceptMap/{resource.get('id')}"
        path, kept, left_out = save_concept_map(folder, resource, where)
        load_mappings(folder)  # the folder reads with it
        click.echo(f"Wrote {path}: {kept} mapping(s) of local codes used, {left_out} left out (not equivalent).")
