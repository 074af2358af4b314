"""Reading images from files and from a local HTTP server started by the test (127.0.0.1):
time-outs, size cap, content type, retries, redirects to other schemes, conditional requests;
and a URL feed indexed end to end."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from indexer.fetch import Fetcher, FetchError, FetchPolicy, file_stamp
from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from tests.indexer.conftest import make_settings, read_state

ETAG = '"v1"'
MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"
FAST = FetchPolicy(
    connect_timeout_s=2, read_timeout_s=0.3, retries=2, backoff_s=0.01, max_bytes=100_000
)


@dataclass
class Site:
    """What the test server serves, and how often each path was asked for."""

    image: bytes
    hits: Counter[str] = field(default_factory=Counter)
    base: str = ""


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
            return self.send(404, b"not here", Content_Type="text/plain")

    return Handler


@pytest.fixture(scope="module")
def site(sample_dir: Path) -> Iterator[Site]:
    image = next(iter(sorted((sample_dir / "images").glob("*.jpg")))).read_bytes()
    site = Site(image=image)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()


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
