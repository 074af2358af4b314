"""Reading catalog images from files and http(s) URLs, with a cheap change check.

Every source gets a *stamp*, compared with the one stored for the image before any content is
read: a file's is "file:SIZE:MTIME_NS"; a URL's is its ETag ("etag:...") or Last-Modified
("last-modified:..."), sent back as a conditional request (`If-None-Match`,
`If-Modified-Since`) so an unchanged image costs one 304 and no body.

URLs: only http and https, also for every redirect; connect and read time-outs; a byte cap
(checked on Content-Length and while streaming); an `image/*` content type; retries with
exponential back-off (and `Retry-After`) on connection errors, time-outs, 429 and 5xx. Every
failure is a `FetchError` whose message is the reason recorded for the image.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import httpx

from indexer.sources import URL_SCHEMES, is_url
from search.errors import RoomlensError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class FetchError(RoomlensError):
    """An image that could not be read; the message says why."""

    code = "fetch_error"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for reading images (defaults suit a nightly run over a merchant's CDN)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    max_bytes: int = 20 * 1024 * 1024
    retries: int = 3  # extra attempts after the first one, for transient failures only
    backoff_s: float = 0.5  # first wait; doubled each retry, with jitter
    max_backoff_s: float = 10.0
    max_redirects: int = 5
    content_types: tuple[str, ...] = ("image/",)  # accepted Content-Type prefixes
    user_agent: str = "roomlens-indexer/0.1"


@dataclass(frozen=True)
class Fetched:
    """A source read: its bytes, or None when its stamp shows it unchanged."""

    data: bytes | None
    stamp: str | None

    @property
    def not_modified(self) -> bool:
        return self.data is None


class _Retry(Exception):
    """A transient failure: try again after `wait_s` (or the back-off) unless out of tries."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


def file_stamp(path: Path) -> str:
    """The stamp of a file: size and modification time in nanoseconds."""
    st = path.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


class Fetcher:
    """Reads image sources under a `FetchPolicy`; thread-safe (one shared HTTP client)."""

    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self._client: httpx.Client | None = None

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def fetch(self, ref: str, *, stamp: str | None = None) -> Fetched:
        """Read `ref` (a path or an http(s) URL); `Fetched(None, stamp)` when `stamp` still
        matches. Raises `FetchError` with the reason when it cannot be read."""
        if is_url(ref):
            return self._fetch_url(ref, stamp)
        if "://" in ref:
            _check_scheme(ref)
        return self._read_file(Path(ref), stamp)

    # --- files -------------------------------------------------------------------------------

    def _read_file(self, path: Path, stamp: str | None) -> Fetched:
        try:
            current = file_stamp(path)
            if stamp is not None and current == stamp:
                return Fetched(None, current)
            size = path.stat().st_size
            if size > self.policy.max_bytes:
                raise FetchError(f"{path} is {size} bytes; the limit is {self.policy.max_bytes}")
            return Fetched(path.read_bytes(), current)
        except FileNotFoundError:
            raise FetchError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise FetchError(f"{path} is a directory") from None
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from exc

    # --- URLs --------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            p = self.policy
            timeout = httpx.Timeout(p.read_timeout_s, connect=p.connect_timeout_s)
            self._client = httpx.Client(
                timeout=timeout,
                follow_redirects=False,
                headers={"User-Agent": p.user_agent},
                trust_env=False,
            )
        return self._client

    def _fetch_url(self, url: str, stamp: str | None) -> Fetched:
        attempt = 0
        while True:
            try:
                return self._attempt(url, stamp)
            except _Retry as retry:
                if attempt >= self.policy.retries:
                    raise FetchError(f"{retry} (after {attempt + 1} attempts): {url}") from None
                wait = self._backoff(attempt, retry.wait_s)
                log.info("retrying %s in %.2f s: %s", url, wait, retry)
                time.sleep(wait)
                attempt += 1

    def _backoff(self, attempt: int, hinted: float | None) -> float:
        p = self.policy
        base = p.backoff_s * (2**attempt) * (0.5 + random.random() / 2)
        return min(p.max_backoff_s, max(base, hinted or 0.0))

    def _attempt(self, url: str, stamp: str | None) -> Fetched:
        """One try, following redirects by hand so that each hop's scheme is checked."""
        headers = _conditional_headers(stamp)
        for _ in range(self.policy.max_redirects + 1):
            _check_scheme(url)
            try:
                with self._http().stream("GET", url, headers=headers) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        url = _redirect_target(url, response)
                        continue
                    return self._read_response(url, response, stamp)
            except httpx.TimeoutException as exc:
                raise _Retry(f"timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise _Retry(f"connection failed ({type(exc).__name__}: {exc})") from exc
        raise FetchError(f"more than {self.policy.max_redirects} redirects: {url}")

    def _read_response(self, url: str, response: httpx.Response, stamp: str | None) -> Fetched:
        status = response.status_code
        if status == 304 and stamp is not None:
            return Fetched(None, stamp)
        if status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status}", _retry_after(response))
        if status != 200:
            raise FetchError(f"HTTP {status}: {url}")
        self._check_headers(url, response)
        return Fetched(self._body(url, response), _response_stamp(response))

    def _check_headers(self, url: str, response: httpx.Response) -> None:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(self.policy.content_types):
            raise FetchError(f"content type {kind or '(none)'!r} is not an image: {url}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchError(f"{length} bytes is over the {self.policy.max_bytes}-byte cap: {url}")

    def _body(self, url: str, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise FetchError(f"body over the {self.policy.max_bytes}-byte cap: {url}")
            chunks.append(chunk)
        return b"".join(chunks)


def _check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchError(f"unsupported scheme {scheme or '(none)'!r}: {url}")


def _redirect_target(url: str, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise FetchError(f"HTTP {response.status_code} without a Location: {url}")
    target = urljoin(url, location)
    _check_scheme(target)
    return target


def _conditional_headers(stamp: str | None) -> dict[str, str]:
    if stamp is None:
        return {}
    kind, _, value = stamp.partition(":")
    if kind == "etag":
        return {"If-None-Match": value}
    if kind == "last-modified":
        return {"If-Modified-Since": value}
    return {}


def _response_stamp(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag")
    if etag:
        return f"etag:{etag}"
    modified = response.headers.get("last-modified")
    return f"last-modified:{modified}" if modified else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
