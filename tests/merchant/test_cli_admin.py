"""`roomlens admin ...` on a copy of the indexed catalog (SQLite): keys and the queries."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from merchant.errors import Unauthorized
from merchant.keys import authenticate
from merchant.querylog import record_search
from roomlens.cli_admin import register
from search.config import IndexSettings, Settings
from search.db import make_engine, make_session_factory, migrate, utcnow
from tests.merchant.conftest import BLANK, BROKEN, DUP_ACME, IndexedCatalog, Searched, copy_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, indexed_catalog: IndexedCatalog, index_copy: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate(url)
    copy_rows(indexed_catalog.db_url, url)
    return Settings(database_url=url, index=IndexSettings(dir=index_copy))


def run(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="roomlens")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["admin", *argv])
    capsys.readouterr()
    assert args.func(args, settings) == 0
    return capsys.readouterr().out


def as_json(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    return json.loads(run(settings, capsys, *argv, "--json"))


def test_keys_create_list_revoke(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(settings, capsys, "keys", "create", "--merchant", "acme", "--label", "front")
    key = out.strip().splitlines()[-1]
    assert key.startswith("rl_") and "shown this once" in out
    admin = as_json(settings, capsys, "keys", "create", "--admin")
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session, session.begin():
        assert authenticate(session=session, key=key).merchant == "acme"
        assert authenticate(session=session, key=admin["key"]).is_admin
    listed = as_json(settings, capsys, "keys", "list")
    assert [k["label"] for k in listed] == ["front", None]
    assert key not in json.dumps(listed) and admin["key"] not in json.dumps(listed)
    prefix = listed[0]["prefix"]
    assert "revoked" in run(settings, capsys, "keys", "revoke", prefix)
    assert [k["prefix"] for k in as_json(settings, capsys, "keys", "list", "--active")] == [
        admin["prefix"]
    ]
    with make_session_factory(engine)() as session, session.begin(), pytest.raises(Unauthorized):
        authenticate(session=session, key=key)
    engine.dispose()


def test_catalog_failures_and_product(
    settings: Settings, capsys: pytest.CaptureFixture[str], indexed_catalog: IndexedCatalog
) -> None:
    table = run(settings, capsys, "catalog")
    assert "acme" in table and "birch" in table and "(total)" in table
    stats = as_json(settings, capsys, "catalog", "--merchant", "birch")
    assert stats["totals"]["products"] == len(indexed_catalog.skus("birch"))
    failures = as_json(settings, capsys, "failures")
    assert [f["sku"] for f in failures["data"]] == [BLANK, BROKEN] and failures["count"] == 2
    assert BROKEN in run(settings, capsys, "failures", "--status", "failed")
    product = as_json(settings, capsys, "product", indexed_catalog.first["sku"])
    inst = product["images"][0]["instances"][0]
    assert inst["mask"]["size"] and len(inst["box"]) == 4 and inst["vector_id"] is not None
    assert "box [" in run(settings, capsys, "product", indexed_catalog.first["sku"])


def test_index_runs_and_duplicates(
    settings: Settings, capsys: pytest.CaptureFixture[str], indexed_catalog: IndexedCatalog
) -> None:
    out = run(settings, capsys, "index")
    assert str(indexed_catalog.report.version) in out and "Flat" in out
    info = as_json(settings, capsys, "index", "--merchant", "acme")
    assert info["live"]["version"] == indexed_catalog.report.version and info["vectors"] > 0
    assert as_json(settings, capsys, "runs")["count"] >= 0
    pairs = as_json(settings, capsys, "duplicates", "--merchant", "acme")
    first = indexed_catalog.first["sku"]
    assert tuple(sorted((first, DUP_ACME))) in {(p["a"]["sku"], p["b"]["sku"]) for p in pairs}
    assert "cosine" in run(settings, capsys, "duplicates", "--same-merchant")


def test_searches(
    settings: Settings, capsys: pytest.CaptureFixture[str], searches: list[Searched]
) -> None:
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session, session.begin():
        for n in range(4):
            row = record_search(
                session=session,
                result=searches[n].result,
                latency_ms=50.0 * (n + 1),
                filters={"merchant": "acme"},
            )
            row.created_at = utcnow() - timedelta(days=n)
    engine.dispose()
    today = utcnow().date().isoformat()
    stats = as_json(settings, capsys, "searches", "--to", today, "--merchant", "acme")
    assert stats["searches"] == 4 and stats["zero_results"] == 1
    assert len(stats["volume"]) == 4 and stats["latency_ms"]["max"] == 200.0
    assert "latency ms: p50" in run(settings, capsys, "searches", "--bucket", "hour")
    log = as_json(settings, capsys, "searches", "--log", "--from", today)
    assert log["count"] == 1
    assert "top products" in run(settings, capsys, "searches", "--log")
