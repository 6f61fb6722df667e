"""The options of the commands that talk to a FHIR server, and the client they open (secrets only from
files or the environment, never from the command line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fhiradapter.cli.common import Command, gathered

if TYPE_CHECKING:
    from fhiradapter.shell.server.connection import ServerOptions
    from fhiradapter.shell.server.fhir_client import FhirClient


# pull and sync: how many patients one search asks for
class PerSearch(click.ParamType):  # type: ignore[type-arg]
    """``auto`` (None: 1 for a whole pull, 20 for an incremental one) or a number from 1 to 100."""

    name = "auto|N"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            number = int(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither auto nor a whole number", param, ctx)
        if not 1 <= number <= 100:
            self.fail(f"{number} is not from 1 to 100", param, ctx)
        return number


per_search_option = click.option(
    "--patients-per-search",
    "per_search",
    type=PerSearch(),
    default="auto",
    show_default=True,
    help="Patients asked for in one search (subject=Patient/a,Patient/b,...), 1 to 100. auto: one by one "
    "for a whole pull (small pages, every slot busy), 20 for an incremental one (pull --since, or a sync "
    "after its first run), where most searches come back empty.",
)


def _server_options(**values: Any) -> ServerOptions:  # click's values (Any): the options' types check them
    """The server options as the shell takes them (imported when a command runs: ``--help`` stays fast)."""
    from fhiradapter.shell.server.connection import ServerOptions  # noqa: PLC0415

    return ServerOptions(**values)


def _optional_server_options(**values: Any) -> ServerOptions | None:
    """The server options, or None when no --server was given (a command that may run without one)."""
    return _server_options(**values) if values.get("server") else None


def server_options(fn: Command) -> Command:
    """Options shared by the commands that talk to a FHIR server (secrets only from files or environment), given
    to the command as one ``server: ServerOptions``."""
    return gathered("server", _server_options, _options(required=True))(fn)


def optional_server_options(fn: Command) -> Command:
    """The server options of a command that may also run without a server (``study``): ``server`` is None
    when no --server is given."""
    return gathered("server", _optional_server_options, _options(required=False))(fn)


def _options(required: bool) -> list[Callable[[Command], Command]]:
    return [
        click.option(
            "--server", required=required, metavar="URL", help="FHIR R4 base URL, e.g. https://fhir.hospital.org/r4"
        ),
        click.option(
            "--auth",
            type=click.Choice(["auto", "none", "bearer", "smart"]),
            default="auto",
            show_default=True,
            help="auto = smart if --client-id is given, bearer if a token is, else none.",
        ),
        click.option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="File holding a bearer token [default: $FHIRADAPTER_TOKEN].",
        ),
        click.option("--client-id", help="SMART Backend Services client id (registered with the server)."),
        click.option(
            "--smart-key-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="PEM private key (RSA -> RS384, EC -> ES384) for SMART [default: $FHIRADAPTER_SMART_KEY].",
        ),
        click.option("--key-id", "kid", help="The key's `kid` in the JWKS the server holds for this client."),
        click.option("--token-url", help="SMART token endpoint [default: from .well-known/smart-configuration]."),
        click.option("--scope", default="system/*.read system/*.write", show_default=True, help="SMART scopes."),
        click.option(
            "--ca-bundle",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA certificates to verify the server with (TLS is always verified).",
        ),
        click.option(
            "--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="Requests in flight."
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(1, 600),
            default=30.0,
            show_default=True,
            help="Seconds one request may take in all, however slowly the server answers (a file download: to "
            "start, then at 64 KiB/s or more).",
        ),
        click.option(
            "--retry-budget",
            type=click.FloatRange(0, 3600),
            default=120.0,
            show_default=True,
            help="Seconds to keep retrying a failing request (408, 429, 5xx, dropped connections).",
        ),
        click.option(
            "--max-pages",
            type=click.IntRange(1),
            default=10_000,
            show_default=True,
            help="Most pages one search may take; a server whose next links never end is stopped sooner.",
        ),
        click.option(
            "--trust-origin",
            multiple=True,
            metavar="URL",
            help="Another origin (scheme://host:port) that may receive the access token, e.g. the storage a Bulk "
            "export's files are on. Repeatable. The token goes nowhere else but --server and the token endpoint.",
        ),
        click.option(
            "--allow-insecure-http",
            is_flag=True,
            help="Send the credential over plain http:// to a host other than this machine (a trusted network).",
        ),
    ]


async def open_server_client(options: ServerOptions) -> FhirClient:
    """A FhirClient for the server options (the shell's ``open_client``; SMART discovery happens there)."""
    from fhiradapter.shell.server.connection import open_client  # noqa: PLC0415

    client = await open_client(options)
    client.on_wait = lambda text: click.echo(f"note: {text}", err=True)
    return client
