"""Pull and push against a real FHIR R4 server (sekmet-fhir, started on 127.0.0.1 and stopped by PID).

The paper cohort is loaded into the server; `fhiradapter pull` brings it back as NDJSON, `evaluate` on it gives
the results evaluate gives on the files; `push` applies the write-back; pulling and evaluating again finds
nothing to write; a changed lab value updates exactly the affected results; a stale write-back is refused
without touching anything. SMART Backend Services is exercised against the server's own token endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest
from builders import AS_OF, ROOT, approve, heart_rates, is_result, standing_rule_all, trusting_mappings
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir_server import SERVERS, load_input, sekmet_server, server_resources
from pg_server import fresh_database

from fhiradapter.cli import main
from fhiradapter.core.writeback import RESPONSE_CODES
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

if TYPE_CHECKING:
    from fhiradapter.shell.run.outputs import Writeback
    from fhiradapter.shell.server.fhir_client import Capability, FhirClient
    from fhiradapter.shell.server.push import PushSummary
    from fhiradapter.shell.server.sync import SyncOptions, SyncSummary

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def evaluate(src: Path, out: Path) -> dict[str, Any]:
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(inputs=(src,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False)
    )
    return read_results(out)


def read_results(out: Path | None) -> dict[str, Any]:
    """results.json of a run folder (a sync's ``out``, which a run that evaluated always has), as JSON."""
    assert out is not None, "the run has no folder"
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def versions(base: str, rtype: str) -> dict[str, str]:
    return {r["id"]: r["meta"]["versionId"] for r in server_resources(base, rtype)}


@pytest.fixture(scope="module")
def files_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return evaluate(PAPER, tmp_path_factory.mktemp("files") / "out")


# How each server is written to: sekmet takes whole transactions; Medplum's router refuses a conditional
# transaction of more than 8 entries (one patient has ~14), so it gets batches (still conditional and idempotent).
WRITE = {"sekmet": ["--chunk", "40"], "medplum": ["--mode", "batch", "--chunk", "30"]}


@pytest.mark.parametrize("server", ["sekmet", "medplum"])
def test_pull_evaluate_push_then_nothing_new_then_one_change(
    server: str, files_results: dict[str, Any], tmp_path: Path
) -> None:
    with SERVERS[server](tmp_path) as base:
        load_input(base, PAPER)
        # 1. Pull: the same results as from the files.
        pulled = cli(
            "pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "p1"), "--no-progress"
        )
        assert pulled.exit_code == 0, pulled.output
        assert "14 patient(s)" in pulled.output and "(1 patient(s) per search)" in pulled.output  # a whole pull
        # sekmet has no `study` search for ResearchSubject; Medplum has, and is asked by it.
        assert ("every ResearchSubject was read and filtered here" in pulled.output) == (server == "sekmet")
        first = evaluate(tmp_path / "p1", tmp_path / "e1")
        assert first["subjects"] == files_results["subjects"]
        assert first["cohort"] == files_results["cohort"]
        # 1b. Five patients per search (subject=Patient/a,Patient/b,...): the same resources, fewer requests.
        grouped = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "p1g"),
                      "--patients-per-search", "5", "--no-progress")  # fmt: skip
        assert grouped.exit_code == 0 and "(5 patient(s) per search" in grouped.output, grouped.output
        assert pulled_lines(tmp_path / "p1g") == pulled_lines(tmp_path / "p1")
        assert requests_made(grouped) * 3 < requests_made(pulled)
        # 1c. All 14 in one search, pages of 10: the Observations' chain of 34 pages runs on past 7 (half the
        #     patients), so that search is read patient by patient, in parallel; the smaller types' chains end
        #     sooner and stay grouped. The same resources again.
        split = asyncio.run(pull_in_pages(base, tmp_path / "p1s", per_search=14, page_size=10))
        assert split.split == 1 and split.per_search == 14
        assert pulled_lines(tmp_path / "p1s") == pulled_lines(tmp_path / "p1")
        # 2. Push the write-back, as several smaller transactions: created and updated, no conflict.
        writeback = str(tmp_path / "e1" / "writeback.json")
        approve(tmp_path / "e1")
        pushed = cli("push", "--server", base, *WRITE[server], "--progress", writeback)
        assert pushed.exit_code == 0, pushed.output
        assert " parts: " in pushed.output and "Writing" in pushed.output  # --progress: the bar's label
        plan = [json.loads(x) for x in (tmp_path / "e1" / "writeback-plan.ndjson").read_text().splitlines()]
        creates = sum(p["action"] == "create" for p in plan)
        updates = sum(p["action"] == "update" for p in plan)
        n_parts = int(pushed.output.split(" in ", 1)[1].split(" parts", 1)[0])
        assert f"created {creates + n_parts}" in pushed.output  # + one Provenance per part
        assert f"updated {updates}" in pushed.output
        # Together the parts' Provenance records name every result written, by its id on the server.
        named = sorted(t["reference"] for p in server_resources(base, "Provenance") for t in p["target"])
        results = [f"Observation/{r['id']}" for r in server_resources(base, "Observation") if is_result(r)]
        updated = [p["existing"] for p in plan if p["action"] == "update"]
        assert named == sorted(results + updated) and len(results) == creates
        after_push = versions(base, "Observation") | versions(base, "ResearchSubject")
        # 3. Pull and evaluate again: the server already holds every result.
        again = cli(
            "pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "p2"), "--no-progress"
        )
        assert again.exit_code == 0, again.output
        evaluate(tmp_path / "p2", tmp_path / "e2")
        plan2 = [json.loads(x) for x in (tmp_path / "e2" / "writeback-plan.ndjson").read_text().splitlines()]
        assert {p["action"] for p in plan2} == {"unchanged"}
        assert json.loads((tmp_path / "e2" / "writeback.json").read_text())["entry"] == []
        approve(tmp_path / "e2")
        nothing = cli("push", "--server", base, *WRITE[server], str(tmp_path / "e2" / "writeback.json"))
        assert nothing.exit_code == 0 and "nothing to send" in nothing.output
        # 4. The stale first write-back is refused (as a whole on sekmet, entry by entry in Medplum's batches):
        #    nothing changes on the server.
        stale = cli("push", "--server", base, *WRITE[server], str(tmp_path / "e1" / "writeback.json"))
        assert stale.exit_code == 13 and "conflict" in stale.output
        assert versions(base, "Observation") | versions(base, "ResearchSubject") == after_push
        # 5. One lab value changes on the server: exactly thal-03's response results are updated.
        # `gt` an instant of whole seconds means after that second ends: `before` is a second back, and the
        # writes of the steps above are older still.
        time.sleep(2.5)
        before = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        obs = httpx.get(f"{base}/Observation/thal-03-afp-a1", timeout=10).json()
        obs["valueQuantity"]["value"] = 2100
        assert httpx.put(f"{base}/Observation/thal-03-afp-a1", json=obs, timeout=10).status_code == 200
        # An incremental pull finds exactly that change: by default (auto) 20 patients per search, so all 14
        # in one search per type; and the same one patient per search, in far more requests.
        changes = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "pc"),
                      "--since", before, "--no-progress")  # fmt: skip
        assert changes.exit_code == 0, changes.output
        assert "(20 patient(s) per search)" in changes.output
        assert json.loads((tmp_path / "pc" / "pull-manifest.json").read_text())["patients_per_search"] == 20
        assert pulled_lines(tmp_path / "pc").get("Observation.ndjson") == {
            json.dumps(httpx.get(f"{base}/Observation/thal-03-afp-a1", timeout=10).json(), sort_keys=True)
        }
        one_by_one = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "pc1"),
                         "--since", before, "--patients-per-search", "1", "--no-progress")  # fmt: skip
        assert one_by_one.exit_code == 0 and "(1 patient(s) per search)" in one_by_one.output, one_by_one.output
        assert pulled_lines(tmp_path / "pc1") == pulled_lines(tmp_path / "pc")
        assert requests_made(changes) * 5 < requests_made(one_by_one)
        cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "p3"), "--no-progress")
        third = evaluate(tmp_path / "p3", tmp_path / "e3")
        plan3 = [json.loads(x) for x in (tmp_path / "e3" / "writeback-plan.ndjson").read_text().splitlines()]
        changed = [p for p in plan3 if p["action"] != "unchanged"]
        assert {p["patient"] for p in changed} == {"Patient/thal-03"}
        assert {(p["action"], p["kind"]) for p in changed} == {("update", "response"), ("update", "best-response")}
        assert next(s for s in third["subjects"] if s["patient"] == "Patient/thal-03")["best_response"] == "PD"
        approve(tmp_path / "e3")
        final = cli("push", "--server", base, *WRITE[server], str(tmp_path / "e3" / "writeback.json"))
        assert final.exit_code == 0 and f"updated {len(changed)}" in final.output, final.output


async def pull_in_pages(base: str, out: Path, per_search: int, page_size: int) -> Any:
    """``pull_into`` an NDJSON folder with a given page size (not a command-line option)."""
    from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient
    from fhiradapter.shell.server.pull import pull_into
    from fhiradapter.shell.server.pull_folder import NdjsonSink

    out.mkdir()
    sink = NdjsonSink(out)
    async with FhirClient(base, settings=ClientSettings(page_size=page_size)) as client:
        summary = await pull_into(client, await client.capabilities(), "thal-hcc-pilot", sink, per_search=per_search)
    sink.close(True)
    return summary


def pulled_lines(folder: Path) -> dict[str, set[str]]:
    """Each pulled NDJSON file's resources, key-sorted (servers may order keys and pages differently)."""
    return {
        f.name: {json.dumps(json.loads(line), sort_keys=True) for line in f.read_text().splitlines()}
        for f in sorted(folder.glob("*.ndjson"))
    }


def requests_made(result: Result) -> int:
    """The request count `fhiradapter pull` or `sync` prints ("  N request(s) ...")."""
    return int(result.output.split(" request(s)", 1)[0].rsplit(" ", 1)[1])


def test_a_grouped_search_whose_pages_run_on_is_read_patient_by_patient_and_said(tmp_path: Path) -> None:
    """250 heart rates for thal-03: the search for it and its neighbour runs to 3 pages of 100, past 2."""
    from fhir_server import post

    vitals = [
        {"resource": r, "request": {"method": "PUT", "url": f"Observation/{r['id']}"}}
        for r in heart_rates("thal-03", 250)
    ]
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        assert post(base, {"resourceType": "Bundle", "type": "transaction", "entry": vitals}).status_code == 200
        args = ["pull", "--server", base, "--study", "thal-hcc-pilot", "--no-progress", "--patients-per-search"]
        one = cli(*args, "1", "--out", str(tmp_path / "one"))
        two = cli(*args, "2", "--out", str(tmp_path / "two"))
        assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
        assert "(2 patient(s) per search; 1 paged on, so read patient by patient)" in two.output
        assert pulled_lines(tmp_path / "two") == pulled_lines(tmp_path / "one")
        assert len(pulled_lines(tmp_path / "one")["Observation.ndjson"]) > 250
        # A sync says so too, and reads the same resources.
        args = ["sync", "--server", base, "--study", "thal-hcc-pilot", "--as-of", AS_OF.isoformat(), "--dry-run"]
        sync = cli(*args, "--data-dir", str(tmp_path / "data"), "--no-progress", "--patients-per-search", "2")
        assert sync.exit_code == 0, sync.output
        assert " request(s) (2 patient(s) per search; 1 paged on, so read patient by patient), 0 retried" in sync.output
        resources = sum(len(lines) for lines in pulled_lines(tmp_path / "one").values())
        assert f"read from the server: {resources} resource(s)" in sync.output


def test_pull_with_since_takes_only_what_changed(tmp_path: Path) -> None:
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        future = "2999-01-01T00:00:00Z"
        result = cli(
            "pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "p"), "--since", future
        )
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / "p" / "pull-manifest.json").read_text())
        # The study and its subjects are always read; no clinical resource changed after the future instant.
        assert manifest["since"] == future and "Observation" not in manifest["resources"]
        bad = cli(
            "pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "q"), "--since", "2024-01-01"
        )
        assert bad.exit_code == 10 and "time zone" in bad.output


def test_a_second_pull_into_the_same_folder_replaces_the_first(tmp_path: Path) -> None:
    """evaluate reads a folder whole: after a --since pull it must hold only what changed, not a mixture."""
    out = tmp_path / "p"
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        full = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(out))
        assert full.exit_code == 0 and (out / "Observation.ndjson").exists(), full.output
        assert "replaced" not in full.output
        full_files = json.loads((out / "pull-manifest.json").read_text())["files"]
        since = cli(
            "pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(out), "--since", "2999-01-01T00:00:00Z"
        )
        assert since.exit_code == 0, since.output
        kept = sorted(p.name for p in out.iterdir())
        manifest = json.loads((out / "pull-manifest.json").read_text())
        assert kept == sorted([*(f"{t}.ndjson" for t in manifest["resources"]), "pull-manifest.json"])
        assert "Observation.ndjson" not in kept  # nothing changed after 2999: the full pull's file is gone
        gone = sorted(set(full_files) - set(manifest["files"]))
        assert (
            f"note: this pull replaced the earlier one in {out}; removed its {len(gone)} other file(s): "
            in since.output
        )
        assert ", ".join(gone[:5]) in since.output
        # A folder holding files a pull did not write is refused before any request, and left as it was.
        (out / "extra.ndjson").write_text("{}\n")
        refused = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(out))
        assert refused.exit_code == 10 and "did not write (extra.ndjson)" in refused.output
        assert sorted(p.name for p in out.iterdir()) == sorted([*kept, "extra.ndjson"])


def test_tls_is_verified_and_a_hospital_ca_is_given_with_ca_bundle(tmp_path: Path) -> None:
    """sekmet serves HTTPS with a certificate from a throwaway CA (trustme) that no trust store holds."""
    import ssl

    import trustme

    ca = trustme.CA()
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    with sekmet_server(tmp_path, tls=(cert, key, ca_file)) as base:
        assert base.startswith("https://")
        load_input(base, PAPER, verify=ssl.create_default_context(cafile=str(ca_file)))
        pull = ["pull", "--study", "thal-hcc-pilot", "--retry-budget", "600"]
        refused = cli(*pull, "--server", base, "--out", str(tmp_path / "a"))
        assert refused.exit_code == 13, refused.output
        assert "TLS certificate was not accepted (unable to get local issuer certificate)" in refused.output
        assert "--ca-bundle FILE" in refused.output and "after retrying" not in refused.output  # not retried
        # SMART discovery, the first request when no --token-url is given, says the same (not "no configuration").
        private = tmp_path / "client.pem"
        private.write_bytes(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        private.chmod(0o600)
        smart = ["--client-id", "c1", "--smart-key-file", str(private)]
        discovery = cli(*pull, "--server", base, "--out", str(tmp_path / "s"), *smart)
        assert discovery.exit_code == 13, discovery.output
        assert "smart-configuration: the server's TLS certificate was not accepted" in discovery.output
        # The right CA, but a name the certificate was not issued for.
        other_name = base.replace("127.0.0.1", "localhost")
        mismatch = cli(*pull, "--server", other_name, "--out", str(tmp_path / "b"), "--ca-bundle", str(ca_file))
        assert mismatch.exit_code == 13 and "not accepted (Hostname mismatch" in mismatch.output, mismatch.output
        trusted = cli(*pull, "--server", base, "--out", str(tmp_path / "c"), "--ca-bundle", str(ca_file))
        assert trusted.exit_code == 0 and "14 patient(s)" in trusted.output, trusted.output


def test_pull_of_an_unknown_study_says_so(tmp_path: Path) -> None:
    with sekmet_server(tmp_path) as base:
        result = cli("pull", "--server", base, "--study", "no-such-study", "--out", str(tmp_path / "p"))
        assert result.exit_code == 13 and "ResearchStudy/no-such-study not found" in result.output
        assert not list((tmp_path / "p").glob("*.ndjson"))


def test_smart_backend_services_against_the_servers_token_endpoint(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "client.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = tmp_path / "client.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with sekmet_server(tmp_path) as base:  # load without auth first
        load_input(base, PAPER)
    smart = (
        "server_auth:\n  types: [smart]\n  smart_clients:\n"
        f"    - client_id: fhiradapter-test\n      public_key_path: {public}\n"
        '      scopes: "system/*.read"\n'
    )
    with sekmet_server(tmp_path, smart) as base:
        anonymous = cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(tmp_path / "a"))
        assert anonymous.exit_code == 13 and "HTTP 401" in anonymous.output
        args = ["--server", base, "--client-id", "fhiradapter-test", "--smart-key-file", str(private)]
        ok = cli("pull", *args, "--scope", "system/*.read", "--study", "thal-hcc-pilot", "--out", str(tmp_path / "s"))
        assert ok.exit_code == 0, ok.output
        assert "14 patient(s)" in ok.output and "BEGIN" not in ok.output
        # A read-only client cannot write: the server's 403 is shown, nothing is retried.
        evaluate(tmp_path / "s", tmp_path / "e")
        approve(tmp_path / "e")
        denied = cli("push", *args, "--scope", "system/*.read", str(tmp_path / "e" / "writeback.json"))
        assert denied.exit_code == 13 and "HTTP 403" in denied.output, denied.output


# ---------------------------------------------------------------------------------------------- sync


def sync_opts(
    tmp_path: Path,
    *,
    study: str = "thal-hcc-pilot",
    since: str = "auto",
    dry_run: bool = False,
    bulk: bool = False,
    chunk: int | None = None,
    mode: Literal["auto", "transaction", "batch", "single"] = "auto",  # push.push's modes
) -> SyncOptions:
    from fhiradapter.shell.server.sync import SyncOptions

    mappings, identity = load_mappings()
    opts = SyncOptions(
        study=study,
        as_of=AS_OF,
        since=since,
        dry_run=dry_run,
        bulk=bulk,
        mode=mode,
        work_dir=tmp_path / "runs",
        mappings=mappings,
        mappings_identity=identity,
        standing_rule=standing_rule_all(),  # these tests are of sync's writing, not of its approvals
    )
    return opts if chunk is None else dataclasses.replace(opts, chunk=chunk)


def result_identifiers(base: str) -> list[str]:
    """Every identifier of the adapter's result Observations on the server (a duplicate would show twice)."""
    from fhiradapter.core.writeback import IDENTIFIER_SYSTEM

    return [
        i["value"]
        for r in server_resources(base, "Observation")
        for i in r.get("identifier", [])
        if i.get("system") == IDENTIFIER_SYSTEM
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The sync store's URL: SQLite in the data folder, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'sync.db'}"
    return fresh_database(request.getfixturevalue("pg_url"), f"sync_{uuid.uuid4().hex[:12]}")


def test_sync_dry_run_then_write_then_nothing_new_then_a_deletion(tmp_path: Path, store_url: str) -> None:
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    store = SyncStore(store_url)
    try:
        with sekmet_server(tmp_path) as base:
            load_input(base, PAPER)
            before = versions(base, "Observation") | versions(base, "ResearchSubject")
            dry = run_sync(FhirClient(base), store, sync_opts(tmp_path, dry_run=True))
            assert dry.plan["create"] > 0 and not dry.pushed
            assert versions(base, "Observation") | versions(base, "ResearchSubject") == before  # nothing written
            assert store.watermark(base, "thal-hcc-pilot") is None
            first = run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert first.provenances >= 1  # one per transaction part
            assert first.pushed["created"] == first.plan["create"] + first.provenances
            assert first.pushed["updated"] == first.plan["update"]
            assert first.watermark == store.watermark(base, "thal-hcc-pilot") is not None
            written = result_identifiers(base)
            assert len(written) == len(set(written)) == first.plan["create"]
            with store.engine.connect() as conn:  # the store records every write with the server's answer
                sql = "SELECT outcome, count(*) FROM written GROUP BY outcome"
                recorded: dict[str, int] = dict(conn.exec_driver_sql(sql).all())
                located = conn.exec_driver_sql("SELECT count(*) FROM written WHERE location IS NULL").scalar()
            assert recorded == dict(first.pushed) and located == 0
            after = versions(base, "Observation") | versions(base, "ResearchSubject")
            second = run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert second.since == first.watermark and set(second.plan) == {"unchanged"} and not second.pushed
            assert versions(base, "Observation") | versions(base, "ResearchSubject") == after
            # A deleted AFP value is noticed from the server's history: thal-03's assessment loses its AFP.
            assert httpx.delete(f"{base}/Observation/thal-03-afp-a1", timeout=10).status_code in (200, 204)
            third = run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert third.deleted == 1 and third.plan["update"] >= 1
            assert set(third.changes) == {"Patient/thal-03"}  # only its results change, and only by updates
            assert set(third.changes["Patient/thal-03"]) == {"update"} and not third.plan["create"]
            assert sum(third.changes["Patient/thal-03"]["update"].values()) == third.plan["update"]
            results = read_results(third.out)
            thal03 = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-03")
            assert all("Observation/thal-03-afp-a1" not in a["evidence"] for a in thal03["assessments"])
            # The store lists the four runs newest first, each with the summary it returned.
            listed, total = store.runs(base, "thal-hcc-pilot", last=3)
            assert total == 4 and [r.run_id for r in listed] == [third.run_id, second.run_id, first.run_id]
            assert (
                [r.status for r in listed] == ["ok", "ok", "ok"]
                and listed[0].summary is not None
                and listed[0].summary.deleted == 1
            )
            assert all(
                r.finished_at is not None and r.started_at.utcoffset() == timedelta(0) <= r.finished_at - r.started_at
                for r in listed
            )
            assert store.runs(base, "another-study") == ([], 0)
    finally:
        store.close()


def test_a_sync_that_dies_before_its_watermark_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    store = SyncStore(data_dir=tmp_path / "data")
    try:
        with sekmet_server(tmp_path) as base:
            load_input(base, PAPER)

            def crash(*_a: Any) -> None:
                raise KeyboardInterrupt  # the operator's Ctrl-C, or the machine going down, after the push

            monkeypatch.setattr(store, "set_watermark", crash)
            with pytest.raises(KeyboardInterrupt):
                run_sync(FhirClient(base), store, sync_opts(tmp_path))
            monkeypatch.undo()
            written = result_identifiers(base)
            assert written and store.watermark(base, "thal-hcc-pilot") is None
            again = run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert set(again.plan) == {"unchanged"} and not again.pushed  # the results were already there
            assert sorted(result_identifiers(base)) == sorted(written)
            with store.engine.connect() as conn:
                statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM sync_runs ORDER BY run_id")]
            assert statuses == ["interrupted", "ok"]
    finally:
        store.close()


class StopAtTransaction(httpx.AsyncHTTPTransport):
    """Ctrl-C as the ``n``-th transaction is about to be sent: the parts before it are on the server."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.sent = n, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/fhir"):
            self.sent += 1
            if self.sent == self.n:
                raise KeyboardInterrupt
        return await super().handle_async_request(request)


def test_a_sync_stopped_half_way_through_its_push_finishes_the_rest_without_duplicates(tmp_path: Path) -> None:
    from fhiradapter.core.writeback import RUN_TAG_SYSTEM
    from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    store = SyncStore(data_dir=tmp_path / "data")
    one_at_a_time = ClientSettings(concurrency=1)  # parts go in order, so "the first two" is well defined
    try:
        with sekmet_server(tmp_path) as base:
            load_input(base, PAPER)
            dry = run_sync(FhirClient(base), store, sync_opts(tmp_path, dry_run=True, chunk=10))
            stop = StopAtTransaction(3)
            with pytest.raises(KeyboardInterrupt):
                run_sync(
                    FhirClient(base, settings=one_at_a_time, transport=stop),
                    store,
                    sync_opts(tmp_path, chunk=10),
                )
            assert stop.sent == 3 and store.watermark(base, "thal-hcc-pilot") is None
            partial = result_identifiers(base)
            assert 0 < len(partial) < dry.plan["create"]  # two whole parts landed, the rest did not
            again = run_sync(FhirClient(base), store, sync_opts(tmp_path, chunk=10))
            assert again.errors == [] and again.conflicts == []
            # The second run creates exactly what the first did not, and updates what is still to update.
            assert again.plan["create"] == dry.plan["create"] - len(partial)
            assert again.plan["create"] + again.plan["update"] + again.plan["unchanged"] == sum(dry.plan.values())
            written = result_identifiers(base)
            assert len(written) == len(set(written)) == dry.plan["create"]
            provenance_tags = [
                t["code"]
                for r in server_resources(base, "Provenance")
                for t in r.get("meta", {}).get("tag", [])
                if t.get("system") == RUN_TAG_SYSTEM
            ]
            assert len(provenance_tags) == len(set(provenance_tags))
            with store.engine.connect() as conn:
                statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM sync_runs ORDER BY run_id")]
            assert statuses == ["dry-run", "interrupted", "ok"]
            final = run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert set(final.plan) == {"unchanged"} and not final.pushed
    finally:
        store.close()


def test_a_conflict_on_push_is_pulled_evaluated_and_retried_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhiradapter.shell.server import sync as sync_mod
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore

    store = SyncStore(data_dir=tmp_path / "data")
    original = sync_mod._push_phase
    calls: list[int] = []
    try:
        with sekmet_server(tmp_path) as base:
            load_input(base, PAPER)

            async def meanwhile(
                client: FhirClient,
                store: SyncStore,
                planned: Writeback,
                opts: SyncOptions,
                cap: Capability,
                summary: SyncSummary,
            ) -> PushSummary:
                calls.append(1)
                if len(calls) == 1:  # another system edits a ResearchSubject between our read and our write
                    rs = httpx.get(f"{base}/ResearchSubject/thal-01-rs", timeout=10).json()
                    rs["assignedArm"] = "thalidomide"
                    assert httpx.put(f"{base}/ResearchSubject/thal-01-rs", json=rs, timeout=10).status_code == 200
                return await original(client, store, planned, opts, cap, summary)

            monkeypatch.setattr(sync_mod, "_push_phase", meanwhile)
            summary = sync_mod.run_sync(FhirClient(base), store, sync_opts(tmp_path))
            assert len(calls) == 2 and summary.conflicts == [] and summary.errors == []
            assert any("conflict on push" in w for w in summary.warnings)
            rs = httpx.get(f"{base}/ResearchSubject/thal-01-rs", timeout=10).json()
            assert rs["assignedArm"] == "thalidomide"  # the other system's edit is kept, not clobbered
            results = read_results(summary.out)
            thal01 = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-01")
            assert rs["status"] == thal01["research_subject_status"]
            written = result_identifiers(base)
            assert len(written) == len(set(written))
    finally:
        store.close()


def test_sync_cli_prints_the_summary_and_exit_code(tmp_path: Path) -> None:
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        args = ["sync", "--server", base, "--study", "thal-hcc-pilot", "--as-of", AS_OF.isoformat()]
        args += ["--mappings", str(trusting_mappings(tmp_path / "site")), "--data-dir", str(tmp_path / "data")]
        args += ["--no-progress"]
        first = cli(*args[:-1], "--progress", "--export-to", f"sqlite:///{tmp_path / 'registry.db'}")
        assert first.exit_code == 0, first.output
        assert "Pulling patients" in first.output and "Writing results" in first.output  # a bar per phase
        assert "Evaluating the study's patients" in first.output  # and a line between them
        assert "patients evaluated 14" in first.output and "conflicts 0; errors 0" in first.output
        # The records evaluate rejected are counted, with their reasons and where they are listed.
        run_out = Path(first.output.split("results in ", 1)[1].split()[0].rstrip(";"))
        evaluated = json.loads((run_out / "summary.json").read_text())
        reasons = ", ".join(f"{k} {v}" for k, v in evaluated["rejects_by_reason"].items())
        assert (
            evaluated["records_rejected"] > 0
            and (
                f"{evaluated['records_used']} used, {evaluated['records_rejected']} rejected ({reasons}; "
                f"see {run_out / 'rejects.ndjson'})"
            )
            in first.output
        )
        assert "Export " in first.output and "new run" in first.output
        assert " request(s) (1 patient(s) per search), 0 retried (" in first.output  # a whole pull
        # The pushed line adds the run's Provenance to the planned creates, and says so: the counts add up.
        planned = re.search(r"plan for the results: create (\d+), update (\d+)", first.output)
        pushed = re.search(r"pushed: created (\d+), updated (\d+) \(with (\d+) Provenance", first.output)
        assert planned and pushed, first.output
        provenances = len(list(server_resources(base, "Provenance")))
        assert int(pushed[3]) == provenances >= 1
        assert (int(pushed[1]), int(pushed[2])) == (int(planned[1]) + provenances, int(planned[2]))
        # The patients whose results change are named, the first five with what changes, as in the plan file.
        plan = [json.loads(line) for line in (run_out / "writeback-plan.ndjson").read_text().splitlines()]
        changing = list(dict.fromkeys(p["patient"] for p in plan if p["action"] != "unchanged"))
        assert len(changing) > 5
        assert f"changes this run makes to the hospital record, for {len(changing)} patient(s)" in first.output
        assert f"    and {len(changing) - 5} more patient(s)" in first.output
        first_kinds = sorted(p["kind"] for p in plan if p["patient"] == changing[0] and p["action"] == "create")
        assert f"    {changing[0]}: create {', '.join(first_kinds)}" in first.output
        # The next run is incremental, so by default asks for 20 patients per search: nothing new to write, in a
        # third of the requests.
        grouped = cli(*args)
        assert grouped.exit_code == 0 and "plan for the results: unchanged " in grouped.output, grouped.output
        assert "pushed: nothing to send" in grouped.output
        assert "Pulling patients" not in grouped.output and "Writing results" not in grouped.output
        assert "Evaluating" not in grouped.output
        assert requests_made(grouped) * 3 < requests_made(first)
        assert " request(s) (20 patient(s) per search), 0 retried (" in grouped.output
        assert "changes this run" not in grouped.output
        # One AFP value changes: a dry run names the one patient whose results would change, and how.
        obs = httpx.get(f"{base}/Observation/thal-03-afp-a1", timeout=10).json()
        obs["valueQuantity"]["value"] = 2100
        assert httpx.put(f"{base}/Observation/thal-03-afp-a1", json=obs, timeout=10).status_code == 200
        dry = cli(*args, "--dry-run")
        assert dry.exit_code == 0 and "plan for the results: update 2, unchanged " in dry.output, dry.output
        assert "changes this run would make to the hospital record, for 1 patient(s)" in dry.output
        # What changes, old and new: the old as the server holds it, the new as results.json says.
        run_out = tmp_path / "data" / "runs" / "run-3" / "out"
        dry_plan = [json.loads(x) for x in (run_out / "writeback-plan.ndjson").read_text().splitlines()]
        thal03 = next(
            r
            for r in json.loads((run_out / "results.json").read_text())["subjects"]
            if r["patient"] == "Patient/thal-03"
        )
        updates = [p for p in dry_plan if p["action"] == "update"]
        assert {p["kind"] for p in updates} == {"best-response", "response"}
        category = {code: name for name, (code, _display) in RESPONSE_CODES.items()}
        for p in updates:
            written = httpx.get(f"{base}/{p['existing']}", timeout=10).json()
            assert p["old"]["response"] == category[written["valueCodeableConcept"]["coding"][0]["code"]]
            assert p["changes"] and all(
                c["old"] != c["new"] and p["new"][c["element"]] == c["new"] for c in p["changes"]
            )
            if p["kind"] == "response":
                (assessment,) = [a for a in thal03["assessments"] if a["date"] == p["new"]["date"]]
                assert (p["new"]["response"], p["new"]["afp"]) == (assessment["response"], assessment["afp"])
            else:
                assert p["new"]["response"] == thal03["best_response"]
        assert "    Patient/thal-03:\n      update Observation/" in dry.output
        bad = cli(*args[:-3], "--since", "yesterday")
        assert bad.exit_code == 10 and "--since" in bad.output
        # A run that fails is recorded with why; `runs` lists them all, newest first, as each run said.
        missing = cli(*[("nope" if a == "thal-hcc-pilot" else a) for a in args])
        assert missing.exit_code == 13 and "ResearchStudy/nope not found" in missing.output, missing.output
        store = ["--data-dir", str(tmp_path / "data")]
        listed = cli("runs", *store)
        assert listed.exit_code == 0, listed.output
        lines = listed.output.splitlines()
        assert lines[0] == f"Sync runs in {tmp_path / 'data' / 'sync.db'}, newest first (4 of 4):"
        heads = [line.split("  ")[1:4] for line in lines if line.startswith("  run ")]
        assert [(h[0], h[2]) for h in heads] == [
            ("run 4", "failed"),
            ("run 3", "dry-run"),
            ("run 2", "ok"),
            ("run 1", "ok"),
        ]
        assert "      stopped: --study nope: ResearchStudy/nope not found on the server" in lines
        first_plan = re.search(r"plan for the results: (.*)", first.output)
        assert first_plan and f"      plan: {first_plan[1]}" in lines
        assert re.search(r"      pushed: created \d+, updated \d+; conflicts 0, errors 0", listed.output)
        assert "      pushed: nothing to send; conflicts 0, errors 0" in lines  # the second run
        as_json = json.loads(cli("runs", *store, "--json", "--last", "2", "--study", "thal-hcc-pilot").output)
        assert as_json["total"] == 3 and [r["status"] for r in as_json["runs"]] == ["dry-run", "ok"]
        assert as_json["runs"][0]["summary"]["changes"] == {
            "Patient/thal-03": {"update": {"best-response": 1, "response": 1}}
        }
        none = cli("runs", *store, "--server", "http://elsewhere.example/fhir")
        assert (
            none.exit_code == 0
            and none.output == f"No sync runs in {tmp_path / 'data' / 'sync.db'} for that server and study.\n"
        )
        absent = cli("runs", "--data-dir", str(tmp_path / "none"))
        assert absent.exit_code == 10 and "no sync store in " in absent.output and not (tmp_path / "none").exists()


def test_sync_on_the_strict_medplum_server(tmp_path: Path) -> None:
    """Every write is validated by Medplum's engine (required bindings included); the second sync writes nothing."""
    from fhir_server import medplum_server

    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    store = SyncStore(data_dir=tmp_path / "data")
    try:
        with medplum_server(tmp_path) as base:
            load_input(base, PAPER)
            first = run_sync(FhirClient(base), store, sync_opts(tmp_path, mode="batch", chunk=30))
            assert first.errors == [] and first.conflicts == []
            assert first.pushed["created"] >= first.plan["create"] and first.pushed["updated"] == first.plan["update"]
            second = run_sync(FhirClient(base), store, sync_opts(tmp_path, mode="batch", chunk=30))
            assert set(second.plan) == {"unchanged"} and not second.pushed
            assert any("no _history" in w for w in second.warnings)  # said, not silently skipped
            written = result_identifiers(base)
            assert len(written) == len(set(written)) == first.plan["create"]
    finally:
        store.close()


def test_sync_through_bulk_export_keeps_only_the_studys_patients(tmp_path: Path) -> None:
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    store = SyncStore(data_dir=tmp_path / "data")
    try:
        with sekmet_server(tmp_path) as base:
            load_input(base, PAPER)
            # A patient of the hospital who is not in the study: exported by Patient/$export, never evaluated.
            other = {"resourceType": "Patient", "id": "not-enrolled", "gender": "female", "birthDate": "1950-01-01"}
            assert httpx.put(f"{base}/Patient/not-enrolled", json=other, timeout=10).status_code in (200, 201)
            by_search = run_sync(FhirClient(base), store, sync_opts(tmp_path, dry_run=True, since="none"))
            by_bulk = run_sync(FhirClient(base), store, sync_opts(tmp_path, dry_run=True, since="none", bulk=True))
            assert by_bulk.plan == by_search.plan and by_bulk.patients == by_search.patients == 14
            assert any("outside the study" in w for w in by_bulk.warnings)
            results = read_results(by_bulk.out)
            assert "Patient/not-enrolled" not in {s["patient"] for s in results["subjects"]}
    finally:
        store.close()


def test_s1_pull_finds_subjects_that_name_the_study_by_identifier(
    tmp_path: Path, files_results: dict[str, Any]
) -> None:
    """docs/protocol.md §1: half the paper's ResearchSubjects name the study by identifier (a logical reference).

    A pull by id and a pull by identifier both bring every subject, and evaluate gives the files' results.
    """
    import shutil

    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import run_sync

    src = tmp_path / "in"
    shutil.copytree(PAPER, src)
    ident = {"system": "urn:example:studies", "value": "THAL-HCC-2003"}
    (study,) = [json.loads(x) for x in (src / "ResearchStudy.ndjson").read_text().splitlines()]
    (src / "ResearchStudy.ndjson").write_text(json.dumps({**study, "identifier": [ident]}) + "\n")
    subjects = [json.loads(x) for x in (src / "ResearchSubject.ndjson").read_text().splitlines()]
    for n, rs in enumerate(subjects):
        if n % 2:
            rs["study"] = {"type": "ResearchStudy", "identifier": ident}
    (src / "ResearchSubject.ndjson").write_text("".join(json.dumps(r) + "\n" for r in subjects))
    with sekmet_server(tmp_path) as base:
        load_input(base, src)
        for study_arg in ("thal-hcc-pilot", "urn:example:studies|THAL-HCC-2003"):
            out = tmp_path / f"p-{len(study_arg)}"
            result = cli("pull", "--server", base, "--study", study_arg, "--out", str(out))
            assert result.exit_code == 0, result.output
            pulled = {json.loads(x)["id"] for x in (out / "ResearchSubject.ndjson").read_text().splitlines()}
            in_bundle = json.loads((src / "screening-candidates.json").read_text())["entry"]
            listed = [e["resource"] for e in in_bundle if e["resource"]["resourceType"] == "ResearchSubject"]
            assert pulled == {r["id"] for r in subjects + listed}
            assert evaluate(out, tmp_path / f"e-{len(study_arg)}")["subjects"] == files_results["subjects"]
            # sync (dry run: nothing written) evaluates the same subjects from its own pull.
            store = SyncStore(f"sqlite:///{tmp_path / f'sync-{len(study_arg)}.db'}")
            try:
                dry = run_sync(
                    FhirClient(base), store, sync_opts(tmp_path / f"s-{len(study_arg)}", study=study_arg, dry_run=True)
                )
            finally:
                store.close()
            assert read_results(dry.out)["subjects"] == files_results["subjects"]


# A summary as runs stored it before held, approved_by, non_atomic and transaction_limit were kept (86354b9), and
# one of a run that stopped before the evaluation ("evaluated": {}).
OLD_SUMMARY = {
    "run_id": 1,
    "server": "http://old.example/fhir",
    "study": "ResearchStudy/s1",
    "since": None,
    "watermark": "2026-12-01T00:00:00Z",
    "dry_run": False,
    "patients": 2,
    "pulled": {"Patient": 2, "Observation": 7},
    "deleted": 0,
    "evaluated": {"records_read": 9, "records_used": 8, "records_rejected": 1, "rejects_by_reason": {"unit": 1}},
    "plan": {"create": 3},
    "changes": {"Patient/p1": {"create": {"eligibility": 1}}},
    "pushed": {"created": 3},
    "provenances": 1,
    "conflicts": [],
    "errors": [],
    "warnings": [],
    "requests": 5,
    "retries": 0,
    "patients_per_search": 20,
    "split": 0,
    "failure": None,
    "seconds": {"pull": 0.25, "evaluate": 1.5, "push": 0.125},
}


def test_runs_reads_summaries_older_runs_stored(tmp_path: Path) -> None:
    from sqlalchemy import update

    from fhiradapter.shell.server.run_record import EvaluatedCounts, as_stored
    from fhiradapter.shell.server.store import SyncStore, sync_runs

    stopped = {**OLD_SUMMARY, "run_id": 2, "evaluated": {}, "plan": {}, "changes": {}, "pushed": {}}
    stopped |= {"patients": 0, "pulled": {}, "provenances": 0, "failure": "GET /metadata: HTTP 503"}
    store = SyncStore(data_dir=tmp_path)
    try:
        for summary, status in ((OLD_SUMMARY, "ok"), (stopped, "failed")):
            run_id = store.start_run("http://old.example/fhir", "s1", None, False)
            with store.engine.begin() as conn:  # as the older version wrote it
                conn.execute(
                    update(sync_runs)
                    .where(sync_runs.c.run_id == run_id)
                    .values(status=status, summary=json.dumps(summary))
                )
        (failed, ok), total = store.runs()
    finally:
        store.close()
    assert total == 2 and ok.summary is not None and failed.summary is not None
    assert ok.summary.evaluated == EvaluatedCounts(
        records_read=9, records_used=8, records_rejected=1, rejects_by_reason={"unit": 1}
    )
    assert ok.summary.per_search == 20 and ok.summary.held == 0 and ok.summary.transaction_limit is None
    assert failed.summary.evaluated is None and failed.summary.failure == "GET /metadata: HTTP 503"
    # What the older version stored reads back as it was, with the fields it did not keep at their defaults.
    assert {k: v for k, v in as_stored(ok.summary).items() if k in OLD_SUMMARY} == OLD_SUMMARY
    assert as_stored(failed.summary)["evaluated"] == {}
    listed = cli("runs", "--data-dir", str(tmp_path))
    assert listed.exit_code == 0, listed.output
    lines = [line.strip() for line in listed.output.splitlines()]
    assert lines[2:] == [
        "stopped: GET /metadata: HTTP 503",
        lines[3],
        "everything: 2 patient(s), 9 resource(s) read, 0 deletion(s) noticed",
        "plan: create 3",
        "pushed: created 3; conflicts 0, errors 0",
    ]
    assert lines[3].endswith("ok  (no end recorded)  ResearchStudy/s1 on http://old.example/fhir")
