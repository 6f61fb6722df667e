"""Building the connection to a FHIR server from the user's options: URL checks, TLS, the credential, the client.

Where the credential may go is settled here, before any request:
- the server URL must be http(s); a credential (bearer token, SMART) goes over plain ``http://`` only to this
  machine, or with ``allow_insecure_http`` (the same for the SMART token endpoint);
- secret files must be readable by their owner only (``auth.read_secret``);
- the credential goes to the server's own origin, the SMART token endpoint, and the origins in ``trusted``
  (``--trust-origin``, e.g. the storage a Bulk export's files are on), nowhere else (``FhirClient``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from fhiradapter.errors import ConfigError
from fhiradapter.shell.server.auth import (
    SMART_KEY_ENV,
    TOKEN_ENV,
    BearerAuth,
    SmartBackendAuth,
    read_secret,
    require_tls,
    smart_token_url,
)
from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient, tls_context

AuthMode = Literal["auto", "none", "bearer", "smart"]  # --auth: auto picks SMART, a bearer token, or none


@dataclass(frozen=True)
class ServerOptions:
    """What the user said about the server (the CLI's server options), secrets only by file or environment."""

    server: str
    auth: AuthMode = "auto"
    token_file: Path | None = None
    client_id: str | None = None
    smart_key_file: Path | None = None
    kid: str | None = None
    token_url: str | None = None
    scope: str = "system/*.read system/*.write"
    ca_bundle: Path | None = None
    concurrency: int = 8
    timeout: float = 30.0
    retry_budget: float = 120.0
    max_pages: int = 10_000
    trust_origin: tuple[str, ...] = field(default_factory=tuple)
    allow_insecure_http: bool = False


async def open_client(options: ServerOptions) -> FhirClient:
    """A FhirClient for the options (not yet entered); SMART discovery happens here."""
    server = options.server.rstrip("/")
    if not server.lower().startswith(("https://", "http://")):
        raise ConfigError(f"--server must be an http(s) URL, got {server!r}")
    for url in options.trust_origin:
        if not url.lower().startswith(("https://", "http://")):
            raise ConfigError(f"--trust-origin must be an http(s) URL, got {url!r}")
    verify: bool | str = str(options.ca_bundle) if options.ca_bundle else True
    tls_context(verify)  # an unusable --ca-bundle is a configuration error, named before any request
    settings = ClientSettings(
        timeout_s=options.timeout,
        concurrency=options.concurrency,
        retry_budget_s=options.retry_budget,
        max_pages=options.max_pages,
        verify=verify,
    )
    mode = options.auth
    token = read_secret(options.token_file, TOKEN_ENV, "bearer token") if mode in ("auto", "bearer") else None
    if mode == "auto":
        mode = "smart" if options.client_id else "bearer" if token else "none"
    auth: httpx.Auth | None = None
    if mode != "none":
        require_tls(server, "--server", options.allow_insecure_http)
        for url in options.trust_origin:
            require_tls(url, "--trust-origin", options.allow_insecure_http)
    if mode == "bearer":
        if not token:
            raise ConfigError(f"--auth bearer needs --token-file FILE or ${TOKEN_ENV}")
        auth = BearerAuth(token)
    elif mode == "smart":
        key = read_secret(options.smart_key_file, SMART_KEY_ENV, "SMART private key")
        if not options.client_id or not key:
            raise ConfigError(f"--auth smart needs --client-id and --smart-key-file FILE (or ${SMART_KEY_ENV})")
        token_url = options.token_url
        if not token_url:
            async with httpx.AsyncClient(verify=tls_context(verify), timeout=settings.timeout_s) as probe:
                token_url = await smart_token_url(probe, server)
        require_tls(token_url, "the SMART token endpoint", options.allow_insecure_http)
        auth = SmartBackendAuth(options.client_id, token_url, key, scope=options.scope, kid=options.kid)
    return FhirClient(server, auth=auth, settings=settings, trusted=options.trust_origin)
