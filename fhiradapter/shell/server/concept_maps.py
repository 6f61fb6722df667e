"""A site's ConceptMap read from its terminology server (a FHIR R4 server) into its mappings folder.

The hospital maintains its local-code mappings on its terminology server; ``fhiradapter mappings conceptmap``
copies one ConceptMap (by canonical url or by id) into the mappings folder as ``conceptmap-<id>.json``, where
``load_mappings`` reads it beside ``codes.toml`` (core/concept_map). A copy in the folder, not a live read at
each run: the mappings' sha256 then names exactly what a run's rules used, and a run needs no terminology
server.
"""

from __future__ import annotations

from fhiradapter.core.json_types import JsonObject
from fhiradapter.errors import ConfigError, ServerError
from fhiradapter.shell.server.fhir_client import FhirClient


async def fetch_concept_map(client: FhirClient, *, url: str | None = None, rid: str | None = None) -> JsonObject:
    """The server's ConceptMap with canonical ``url`` (exactly one must match) or with id ``rid``.

    JSON at the edge: the caller checks it as the folder's files are checked (core/concept_map).
    """
    if rid is not None:
        found = await client.read("ConceptMap", rid)
        if found is None:
            raise ConfigError(f"{client.base}: ConceptMap/{rid} not found")
        return found
    if url is None:
        raise ConfigError("a ConceptMap is named by its canonical url or by its id")
    try:
        answers = [r async for r in client.search("ConceptMap", [("url", url)])]
    except ServerError as exc:  # no url search here: read them all
        if exc.status is None or not 400 <= exc.status < 500:
            raise
        answers = [r async for r in client.search("ConceptMap", [])]
    # Filtered here too: a server that ignores the parameter must not make every map this one.
    matching = [r for r in answers if r.get("url") == url]
    if len(matching) != 1:
        ids = ", ".join(str(r.get("id")) for r in matching)
        raise ConfigError(
            f"{client.base}: {len(matching)} ConceptMap resources have url {url}{f' ({ids})' if ids else ''}; "
            "need one (name it by --id)"
        )
    return matching[0]
