"""Reading images from files and from a local HTTP server started by the test (127.0.0.1):
time-outs, size cap, content type, retries, redirects to other schemes, conditional requests;
and a URL feed indexed end to end."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from search.config import Settings
from search.errors import FetchError, FetchRefused
from search.fetch import Fetcher, FetchPolicy, check_url_address, file_stamp
from tests.indexer.conftest import make_settings, read_state

ETAG = '"v1"'
MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"
FAST = FetchPolicy(
    connect_timeout_s=2,
    read_timeout_s=0.3,
    retries=2,
    backoff_s=0.01,
    max_bytes=100_000,
    allow_hosts=frozenset({"127.0.0.1"}),  # the test server
)


QUIET = IndexOptions(progress=False)


@dataclass
class Site:
    """What the test server serves, and how often each path was asked for."""

    image: bytes
    hits: Counter[str] = field(default_factory=Counter)
    base: str = ""
    decoy: str = ""  # a second server, on 127.0.0.2: a private address never allowed here
    decoy_hits: Counter[str] = field(default_factory=Counter)


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def send(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            if "Content_Length" not in headers and status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            path = self.path
            site.hits[path] += 1
            if path == "/etag.jpg":
                if self.headers.get("If-None-Match") == ETAG:
                    return self.send(304, ETag=ETAG)
                return self.send(200, site.image, Content_Type="image/jpeg", ETag=ETAG)
            if path == "/modified.jpg":
                if self.headers.get("If-Modified-Since") == MODIFIED:
                    return self.send(304)
                return self.send(200, site.image, Content_Type="image/jpeg", Last_Modified=MODIFIED)
            if path == "/page.html":
                return self.send(200, b"<html></html>", Content_Type="text/html")
            if path == "/huge.jpg":
                return self.send(200, b"x" * 200_000, Content_Type="image/jpeg")
            if path == "/stream.jpg":  # no Content-Length: the cap is checked while reading
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"x" * 10_000)
                return None
            if path == "/slow.jpg":
                time.sleep(1.0)
                return self.send(200, site.image, Content_Type="image/jpeg")
            if path == "/flaky.jpg" and site.hits[path] < 3:
                return self.send(503, Retry_After="0")
            if path == "/flaky.jpg":
                return self.send(200, site.image, Content_Type="image/jpeg")
            if path == "/to-ftp":
                return self.send(302, Location="ftp://127.0.0.1/secret.jpg")
            if path == "/to-file":
                return self.send(301, Location="file:///etc/passwd")
            if path == "/to-image":
                return self.send(307, Location="/etag.jpg")
            if path == "/to-private":  # an allowed host sending the fetch into the network
                return self.send(302, Location=f"{site.decoy}/etag.jpg")
            return self.send(404, b"not here", Content_Type="text/plain")

    return Handler


def _serve(host: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def site(sample_dir: Path) -> Iterator[Site]:
    image = next(iter(sorted((sample_dir / "images").glob("*.jpg")))).read_bytes()
    site = Site(image=image)
    server = _serve("127.0.0.1", _handler(site))
    decoy = _serve("127.0.0.2", _handler(Site(image=image, hits=site.decoy_hits)))
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    site.decoy = f"http://127.0.0.2:{decoy.server_address[1]}"
    try:
        yield site
    finally:
        for s in (server, decoy):
            s.shutdown()
            s.server_close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(FAST) as fetcher:
        yield fetcher


def test_etag_and_last_modified_make_conditional_requests(site: Site, fetcher: Fetcher) -> None:
    first = fetcher.fetch(f"{site.base}/etag.jpg")
    assert (first.data, first.stamp) == (site.image, f"etag:{ETAG}")
    again = fetcher.fetch(f"{site.base}/etag.jpg", stamp=first.stamp)
    assert again.not_modified and again.stamp == first.stamp
    stale = fetcher.fetch(f"{site.base}/etag.jpg", stamp='etag:"v0"')
    assert stale.data == site.image
    dated = fetcher.fetch(f"{site.base}/modified.jpg")
    assert dated.stamp == f"last-modified:{MODIFIED}"
    assert fetcher.fetch(f"{site.base}/modified.jpg", stamp=dated.stamp).not_modified


@pytest.mark.parametrize(
    ("path", "reason", "attempts"),
    [
        ("/missing.jpg", "HTTP 404", 1),
        ("/page.html", "content type 'text/html' is not an image", 1),
        ("/huge.jpg", "over the 100000-byte cap", 1),
        ("/stream.jpg", "body over the 100000-byte cap", 1),
        ("/slow.jpg", "timed out (ReadTimeout) (after 3 attempts)", 3),
        ("/to-ftp", "unsupported scheme 'ftp'", 1),
        ("/to-file", "unsupported scheme 'file'", 1),
    ],
)
def test_what_cannot_be_fetched_says_why(
    site: Site, fetcher: Fetcher, path: str, reason: str, attempts: int
) -> None:
    before = site.hits[path]
    with pytest.raises(FetchError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        fetcher.fetch(site.base + path)
    assert site.hits[path] - before == attempts


def test_transient_errors_are_retried_and_redirects_followed(site: Site, fetcher: Fetcher) -> None:
    assert fetcher.fetch(f"{site.base}/flaky.jpg").data == site.image
    assert site.hits["/flaky.jpg"] == 3
    assert fetcher.fetch(f"{site.base}/to-image").data == site.image
    with pytest.raises(FetchError, match="unsupported scheme 'ftp'"):
        fetcher.fetch("ftp://127.0.0.1/x.jpg")


def test_files_use_size_and_mtime_as_stamp(tmp_path: Path, fetcher: Fetcher) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    first = fetcher.fetch(str(path))
    assert (first.data, first.stamp) == (b"abc", file_stamp(path))
    assert fetcher.fetch(str(path), stamp=first.stamp).not_modified
    path.write_bytes(b"abcd")
    assert fetcher.fetch(str(path), stamp=first.stamp).data == b"abcd"
    with pytest.raises(FetchError, match="no such file"):
        fetcher.fetch(str(tmp_path / "gone.jpg"))
    path.write_bytes(b"x" * 100_001)
    with pytest.raises(FetchError, match="the limit is 100000"):
        fetcher.fetch(str(path))


@pytest.mark.slow
def test_a_url_feed_is_indexed_and_unchanged_urls_cost_a_304(
    site: Site, db_url: str, tmp_path: Path, index_models: IndexModels
) -> None:
    rows = [
        {"sku": "u1", "title": "By ETag", "category": "sofa", "image": f"{site.base}/etag.jpg"},
        {"sku": "u2", "title": "Gone", "category": "sofa", "image": f"{site.base}/missing.jpg"},
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = make_settings(db_url, tmp_path)
    options = IndexOptions(progress=False, fetch=FAST)
    first = run_index(feed, settings=settings, options=options, models=index_models)
    assert (first.status, first.images_processed) == ("partial", 1)
    assert first.image_failures == [("u2", f"HTTP 404: {site.base}/missing.jpg")]
    assert list(read_state(settings).vectors) == ["u1", "u2"]
    before = site.hits["/etag.jpg"]
    second = run_index(feed, settings=settings, options=options, models=index_models)
    assert (second.images_processed, second.images_unchanged) == (0, 1)
    assert site.hits["/etag.jpg"] == before + 1  # one conditional request, answered 304


# --- server-side request forgery ----------------------------------------------------------------


def test_a_redirect_from_an_allowed_host_to_a_private_address_is_refused(
    site: Site, fetcher: Fetcher
) -> None:
    with pytest.raises(FetchRefused, match=r"refused: loopback address 127\.0\.0\.2"):
        fetcher.fetch(f"{site.base}/to-private")
    assert site.decoy_hits.total() == 0, "the private address was never connected to"
    with Fetcher(replace(FAST, allow_hosts=frozenset({"127.0.0.1", "127.0.0.2"}))) as both:
        assert both.fetch(f"{site.base}/to-private").data == site.image
    assert site.decoy_hits["/etag.jpg"] == 1


def test_the_address_is_checked_when_connecting_not_earlier(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a name that looked public when it was checked resolves to the
    loopback by the time it is fetched, and the fetch refuses it."""
    answers = iter(["93.184.216.34", "127.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "images.example":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = site.base.replace("127.0.0.1", "images.example") + "/etag.jpg"
    with Fetcher(replace(FAST, allow_hosts=frozenset())) as fetcher:
        check_url_address(url, fetcher.guard)  # public at upsert time
        before = site.hits.total()
        with pytest.raises(FetchRefused, match=r"loopback address 127\.0\.0\.1 \(of images"):
            fetcher.fetch(url)
    assert site.hits.total() == before


def _feed_at(tmp_path: Path, url: str) -> Path:
    feed = tmp_path / "feed.jsonl"
    row = {"sku": "ssrf", "title": "Internal", "category": "sofa", "image": url}
    feed.write_text(json.dumps(row) + "\n")
    return feed


@pytest.mark.slow
def test_a_feed_pointing_at_a_private_address_makes_no_request(
    site: Site, db_url: str, tmp_path: Path, index_models: IndexModels
) -> None:
    settings = make_settings(db_url, tmp_path)  # the default fetch settings: nothing private
    before = site.hits.total()
    feed = _feed_at(tmp_path, f"{site.base}/etag.jpg")
    report = run_index(feed, settings=settings, options=QUIET, models=index_models)
    assert site.hits.total() == before, "no request reached the local server"
    assert (report.status, report.exit_code) == ("partial", 3)
    [(sku, reason)] = report.image_failures
    assert sku == "ssrf" and reason.startswith("refused: loopback address 127.0.0.1"), reason

    allowed = settings.model_copy(
        update={"fetch": settings.fetch.model_copy(update={"allow_hosts": ["127.0.0.1"]})}
    )
    report = run_index(feed, settings=allowed, options=QUIET, models=index_models)
    assert (report.status, report.images_processed) == ("succeeded", 1)
    assert site.hits.total() == before + 1
    assert len(read_state(allowed).vectors["ssrf"]) == 1


def test_the_allow_list_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMLENS_FETCH__ALLOW_HOSTS", '["images.intranet", "10.1.0.0/16"]')
    guard = Fetcher(Settings().fetch.policy()).guard
    assert guard.refusal("images.intranet", ipaddress.ip_address("10.9.9.9")) is None
    assert guard.refusal("cdn.intranet", ipaddress.ip_address("10.1.2.3")) is None
    assert guard.refusal("cdn.intranet", ipaddress.ip_address("10.2.0.1")) == (
        "refused: private address 10.2.0.1"
    )
