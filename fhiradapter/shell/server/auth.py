"""Authentication for the FHIR client, as ``httpx.Auth`` flows: none, a static bearer token, SMART Backend Services.

Secrets come from environment variables or files, never from command-line values, and never appear in
``repr``, logs or error messages. A secret file that group or others may read is refused (``chmod 600``), and
no secret is sent over plain ``http://`` except to this machine (``require_tls``) unless the user says
``--allow-insecure-http``.

SMART Backend Services (client_credentials with a ``private_key_jwt`` assertion, signed RS384 or ES384 with
PyJWT): the access token is cached and refreshed ``REFRESH_MARGIN_S`` before it expires; a 401 on a request
fetches a new token and retries that request once. The token request is made inside the auth flow, on the
same connection pool, so it shares the client's timeouts and TLS settings.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path

import httpx
import jwt
import orjson

from fhiradapter.core.json_types import JsonValue
from fhiradapter.errors import ConfigError, ServerError
from fhiradapter.shell.server.fhir_client import certificate_refused, is_loopback, request_of

TOKEN_ENV = "FHIRADAPTER_TOKEN"  # noqa: S105 - the variable's name, not a secret
SMART_KEY_ENV = "FHIRADAPTER_SMART_KEY"
REFRESH_MARGIN_S = 60
ASSERTION_LIFETIME_S = 300  # the SMART spec's maximum
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def read_secret(file: Path | None, env: str, what: str) -> str | None:
    """A secret from ``file`` (preferred) or the environment variable ``env``; None when neither is given."""
    if file is not None:
        try:
            mode = file.stat().st_mode
            value = file.read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what} file unreadable: {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what} file is not text: {file}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{what} file {file} may be read by other users (mode {stat.filemode(mode)}); "
                f"run `chmod 600 {file}` and use it again"
            )
        if not value:
            raise ConfigError(f"{what} file is empty: {file}")
        return value
    value = os.environ.get(env, "").strip()
    return value or None


def require_tls(url: str, what: str, allow_insecure_http: bool) -> None:
    """Refuse to send a secret (token, SMART assertion) to ``url`` over plain HTTP, unless it is this machine or
    the user said ``--allow-insecure-http``: anyone on the path would read it."""
    if url.lower().startswith("http://") and not is_loopback(url) and not allow_insecure_http:
        raise ConfigError(
            f"{what} {url} is plain http://: the credential would cross the network unencrypted. Use https://, "
            "or --allow-insecure-http if this network is trusted"
        )


class BearerAuth(httpx.Auth):
    """A static bearer token (from ``--token-file`` or ``FHIRADAPTER_TOKEN``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: a signed client assertion traded for an access token at ``token_url``."""

    requires_response_body = True

    def __init__(
        self,
        client_id: str,
        token_url: str,
        private_key_pem: str,
        scope: str = "system/*.read system/*.write",
        kid: str | None = None,
        alg: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id, self.token_url, self.scope, self.kid = client_id, token_url, scope, kid
        self._key = private_key_pem
        self.alg = alg or _algorithm_for(private_key_pem)
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, alg={self.alg!r}, <key hidden>)"

    def assertion(self) -> str:
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)

    def _token_request(self) -> httpx.Request:
        self.token_requests += 1
        return httpx.Request(
            "POST",
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.assertion(),
            },
            headers={"Accept": "application/json"},
        )

    def _take_token(self, response: httpx.Response) -> None:
        try:
            body: JsonValue = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            error = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise ServerError(
                f"SMART token request to {self.token_url} refused: HTTP {response.status_code}"
                + (f": {str(error)[:200]}" if error else ""),
                response.status_code,
                request=request_of("POST", self.token_url),
            )
        self._token = str(body["access_token"])
        expires_in = body.get("expires_in", 300)
        lifetime = float(expires_in) if isinstance(expires_in, int | float | str) else 300.0  # seconds, as RFC 6749
        self._expires_at = self._clock() + lifetime

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - REFRESH_MARGIN_S

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._fresh():
            self._take_token((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            # The token was revoked or the server restarted: authenticate again, once.
            self._take_token((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


def _algorithm_for(pem: str) -> str:
    """RS384 for an RSA key, ES384 for an EC key (the two SMART Backend Services requires servers to accept)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("the SMART private key is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384"
    raise ConfigError("the SMART private key must be RSA (RS384) or EC (ES384)")


async def smart_token_url(client: httpx.AsyncClient, base: str) -> str:
    """The token endpoint from ``.well-known/smart-configuration`` (SMART App Launch discovery)."""
    url = base.rstrip("/") + "/.well-known/smart-configuration"
    try:
        response = await client.get(url, headers={"Accept": "application/json"})
        body = orjson.loads(response.content) if response.status_code == 200 else None
    except httpx.TransportError as exc:
        refused = certificate_refused(exc)  # say so, rather than "no SMART configuration"
        if refused is not None:
            raise ServerError(f"GET {url}: {refused}", request=request_of("GET", url)) from None
        body = None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("token_endpoint"), str):
        raise ConfigError(f"no SMART configuration at {url}: give --token-url")
    return str(body["token_endpoint"])
