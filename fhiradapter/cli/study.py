"""``fhiradapter study``: the study itself as FHIR (ResearchStudy, eligibility Group, PlanDefinition, ValueSets)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import guard, mappings_line, mappings_option, warn_unused_mappings
from fhiradapter.cli.server_options import open_server_client, optional_server_options

if TYPE_CHECKING:
    from fhiradapter.core.study_publish import ServerCopy
    from fhiradapter.shell.server.connection import ServerOptions


@click.command("study", short_help="Write the study's definition as FHIR, for approve and push.")
@optional_server_options
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@mappings_option("the protocol, codes, study.toml, published.toml and export.toml")
def study_cmd(out: Path, mappings_dir: Path | None, server: ServerOptions | None) -> None:
    """Write the study's definition into OUT as a write-back: the ResearchStudy, its eligibility Group (one
    characteristic per criterion of docs/protocol.md §2), the PlanDefinition (the study drug, the assessments
    and their timing, the dose rules) with the drug's ActivityDefinition, and one ValueSet per code list of
    codes.toml (the site's local codes, and those of its conceptmap*.json, included).

    All of it is built from the mappings the rules run on and the rule book's fixed limits (core/limits.py).
    With --server, the study is first looked up by its identifiers (protocol.toml [study]): a ResearchStudy the
    server holds under one of them is the one published (its id kept). Then each resource is compared with the
    server's copy: unchanged ones are not written, changed ones are updates (If-Match the version read).
    Without --server, every resource is planned as a create.

    OUT holds writeback.json and writeback-plan.ndjson, as evaluate's write-back does: review and approve them
    with `fhiradapter approve OUT --by NAME`, then `fhiradapter push --server URL OUT/writeback.json`.

    \b
    Example:
      fhiradapter study --server https://fhir.hospital.org/r4 study-out/
      fhiradapter approve study-out/ --by "A. Kim" --role "study data manager"
      fhiradapter push --server https://fhir.hospital.org/r4 study-out/writeback.json
    """
    import asyncio  # noqa: PLC0415

    import msgspec  # noqa: PLC0415

    from fhiradapter.core.study_publish import build_study  # noqa: PLC0415
    from fhiradapter.shell.common.mappings_io import default_mappings_dir, load_mappings  # noqa: PLC0415
    from fhiradapter.shell.study.publish import (  # noqa: PLC0415
        check_out_folder,
        load_study_inputs,
        publish,
        server_copies,
        study_id_on_server,
    )

    with guard():
        folder = mappings_dir or default_mappings_dir()
        mappings, identity = load_mappings(folder)
        click.echo(mappings_line(folder))
        warn_unused_mappings(folder)
        inputs = load_study_inputs(folder, mappings)
        check_out_folder(out)
        copies = None
        if server is not None:

            async def read() -> tuple[str | None, dict[str, ServerCopy]]:
                client = await open_server_client(server)
                async with client:
                    found = await study_id_on_server(client, mappings)
                    built = build_study(mappings, msgspec.structs.replace(inputs, study_id=found))
                    return found, await server_copies(client, built)

            found_id, copies = asyncio.run(read())
            inputs = msgspec.structs.replace(inputs, study_id=found_id)
        published = publish(out, mappings, identity, inputs, copies, server.server if server else None)
        counts = ", ".join(f"{a} {published.count(a)}" for a in ("create", "update", "unchanged"))
        against = f"compared with {server.server}" if server is not None else "not compared with a server"
        click.echo(f"Study {mappings.study_ref}: {len(published.resources)} resources ({against}): {counts}.")
        if published.count("create") + published.count("update") == 0:
            click.echo("Nothing to write: the server already holds the study as the mappings define it.")
            return
        click.echo(f"Review and approve: fhiradapter approve {out} --by NAME")
        click.echo(f"Then send it with: fhiradapter push --server URL {out / 'writeback.json'}")
