"""A small real catalog, indexed once per test session with the offline models, and the
loaded app state shared by the API test modules (test_search_e2e.py keeps its own).

The products get made-up prices, currencies, merchants and stock so that every filter has
something to tell apart: product i costs 50 + 25 * i EUR, is sold by `shop-a` (even i) or
`shop-b` (odd i) and is out of stock when i % 3 == 0.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.main import create_app
from api.state import AppState, build_state
from indexer.pipeline import IndexOptions, IndexReport, run_index
from search.config import IndexSettings, Settings
from search.db import migrate
from search.fetch import Fetcher

SMALL_CATALOG_SIZE = 16
ROOM_CATEGORIES = ("sofa", "armchair", "chair_stool_bench", "table")


@dataclass(frozen=True)
class SmallCatalog:
    settings: Settings
    report: IndexReport
    rooms: list[dict[str, Any]]  # queries-dev lines whose photos show some of the products
    products: list[dict[str, Any]]  # the feed lines, in feed order

    def room_photo(self, sample_dir: Path, n: int = 0) -> Path:
        return sample_dir / self.rooms[n]["image"]


def _pick_rooms(sample_dir: Path, n: int = 2) -> list[dict[str, Any]]:
    queries = [json.loads(line) for line in (sample_dir / "queries-dev.jsonl").open()]
    chosen = [q for q in queries if {e["category"] for e in q["expected"]} >= {"sofa", "table"}]
    return chosen[:n]


def small_feed(sample_dir: Path, rooms: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """`size` catalog products, those seen in `rooms` first, with made-up commerce fields."""
    catalog = [json.loads(line) for line in (sample_dir / "catalog.jsonl").open()]
    by_sku = {p["sku"]: p for p in catalog}
    seen = [
        e["sku"]
        for room in rooms
        for e in room["expected"]
        if e["category"] in ROOM_CATEGORIES and e["sku"] in by_sku
    ]
    skus = list(dict.fromkeys(seen))[:size]
    fillers = [
        p["sku"] for p in catalog if p["category"] in ROOM_CATEGORIES and p["sku"] not in skus
    ]
    skus += fillers[: size - len(skus)]
    products = []
    for i, sku in enumerate(skus):
        product = dict(by_sku[sku])
        product["image"] = str(sample_dir / product["image"])
        product.update(
            price=50.0 + 25.0 * i,
            currency="EUR",
            merchant="shop-a" if i % 2 == 0 else "shop-b",
            in_stock=i % 3 != 0,
        )
        products.append(product)
    return products


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> SmallCatalog:
    tmp = tmp_path_factory.mktemp("small-catalog")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'roomlens.db'}", index=IndexSettings(dir=tmp / "index")
    )
    rooms = _pick_rooms(sample_dir)
    products = small_feed(sample_dir, rooms, SMALL_CATALOG_SIZE)
    feed = tmp / "feed.jsonl"
    feed.write_text("".join(json.dumps(p) + "\n" for p in products))
    migrate(settings.database_url)
    report = run_index(feed, settings=settings, options=IndexOptions(progress=False))
    return SmallCatalog(settings, report, rooms, products)


@pytest.fixture(scope="session")
def app_state(small_catalog: SmallCatalog) -> Iterator[AppState]:
    """Models loaded once, on the small catalog's database and index."""
    state = build_state(small_catalog.settings)
    yield state
    state.engine.dispose()


@pytest.fixture(scope="session")
def live_server(app_state: AppState) -> Iterator[str]:
    """The app served by uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL.

    URL fetches give up after 2 s here, so generated `image_url`s never hold a test up.
    """
    policy = replace(app_state.fetcher.policy, deadline_s=2.0, read_timeout_s=2.0)
    state = replace(app_state, fetcher=Fetcher(policy))
    app = create_app(state.settings, state=state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
