"""The one image fetcher: files, and http(s) URLs that may never reach a private network.

Every source gets a *stamp*, compared with the one stored for the image before any content is
read: a file's is "file:SIZE:MTIME_NS"; a URL's is its ETag ("etag:...") or Last-Modified
("last-modified:..."), sent back as a conditional request (`If-None-Match`,
`If-Modified-Since`) so an unchanged image costs one 304 and no body.

URLs: only http and https, also for every redirect; connect and read time-outs and an optional
deadline for the whole fetch; a byte cap (checked on Content-Length and while streaming); an
image content type; retries with exponential back-off (and `Retry-After`) on connection
errors, time-outs, 429 and 5xx.

Server-side request forgery: every TCP connection (redirects and retries included) is made to
an address resolved and checked at that moment, never to a name resolved earlier, so neither a
redirect nor DNS rebinding gets past the check. Loopback, private, link-local, multicast,
reserved, unspecified and other non-global addresses (IPv4 and IPv6, IPv4-mapped IPv6 too) are
refused unless the host is on the policy's allow-list (`ROOMLENS_FETCH__ALLOW_HOSTS`).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from search.errors import FetchedNotAnImage, FetchedTooLarge, FetchError, FetchRefused

log = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https")
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for reading images. The defaults suit a nightly run over a merchant's CDN; the
    API sets a short deadline and no retries (a shopper is waiting)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    deadline_s: float | None = None  # the whole fetch, redirects and retries included
    max_bytes: int = 20 * 1024 * 1024
    retries: int = 3  # extra attempts after the first one, for transient failures only
    backoff_s: float = 0.5  # first wait; doubled each retry, with jitter
    max_backoff_s: float = 10.0
    max_redirects: int = 5
    content_types: tuple[str, ...] = ("image/",)  # accepted Content-Type prefixes
    user_agent: str = "roomlens/0.1"
    allow_hosts: frozenset[str] = frozenset()  # names, addresses or CIDR networks let through


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


def url_scheme(ref: str) -> str | None:
    """The scheme `ref` starts with ("http", "ftp", ...), lower-cased; None for a path."""
    match = _SCHEME.match(ref)
    return match.group(1).lower() if match else None


def is_url(ref: str) -> bool:
    """True for an http(s) URL."""
    return url_scheme(ref) in URL_SCHEMES


def file_stamp(path: Path) -> str:
    """The stamp of a file: size and modification time in nanoseconds."""
    st = path.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


# --- the address check ----------------------------------------------------------------------


@dataclass(frozen=True)
class AddressGuard:
    """Which hosts a fetch may connect to: public addresses, and the allow-list's entries
    (host names matched exactly, case-insensitive; addresses and CIDR networks matched
    against the resolved address)."""

    names: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def from_allow_list(cls, entries: Iterable[str]) -> AddressGuard:
        names: set[str] = set()
        networks: list[IpNetwork] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def refusal(self, host: str, address: IpAddress) -> str | None:
        """Why `address` (resolved from `host`) may not be connected to, or None."""
        if host.lower().rstrip(".") in self.names:
            return None
        if any(address in network for network in self.networks):
            return None
        kind = address_kind(address)
        return None if kind is None else f"refused: {kind} address {address}"

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` to connect to, each checked; `FetchRefused` if any is
        refused (a name with one private address among public ones is refused whole)."""
        literal = _literal_address(host)
        if literal is not None:
            infos: list[Any] = [(None, None, None, None, (str(literal), port))]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise FetchError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for text in addresses:
            reason = self.refusal(host, ipaddress.ip_address(text))
            if reason is not None:
                raise FetchRefused(reason if literal is not None else f"{reason} (of {host})")
        return addresses


def address_kind(address: IpAddress) -> str | None:
    """What makes `address` non-public ("loopback", "private", ...), or None for a global
    unicast address. An IPv4-mapped or IPv4-compatible IPv6 address is judged as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return address_kind(mapped)
        if address.packed[:12] == bytes(12) and int(address) > 1:  # ::a.b.c.d (deprecated)
            return address_kind(ipaddress.IPv4Address(address.packed[12:]))
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def _literal_address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the guard lets through."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.guard.resolve(host, port):
            try:  # TLS still checks the certificate against `host` (httpcore's origin)
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")


def _guarded_transport(guard: AddressGuard) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # the same pool, with the guarded backend
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=_GuardedBackend(guard),
    )
    return transport


# --- the fetcher ----------------------------------------------------------------------------


class Fetcher:
    """Reads image sources under a `FetchPolicy`; thread-safe (one shared HTTP client)."""

    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self.guard = AddressGuard.from_allow_list(self.policy.allow_hosts)
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
        matches. Raises a `FetchError` that says why it cannot be read (`FetchRefused`,
        `FetchedTooLarge`, `FetchedNotAnImage` are kinds of it)."""
        if is_url(ref):
            return self.fetch_url(ref, stamp=stamp)
        if "://" in ref:
            check_url(ref)
        return self._read_file(Path(ref), stamp)

    def fetch_url(self, url: str, *, stamp: str | None = None) -> Fetched:
        """Read an http(s) URL, with retries for transient failures."""
        deadline = None if self.policy.deadline_s is None else _now() + self.policy.deadline_s
        attempt = 0
        while True:
            try:
                return self._attempt(url, stamp, deadline)
            except _Retry as retry:
                wait = self._backoff(attempt, retry.wait_s)
                out_of_time = deadline is not None and _now() + wait >= deadline
                if attempt >= self.policy.retries or out_of_time:
                    raise FetchError(f"{retry} (after {attempt + 1} attempts): {url}") from None
                log.info("retrying %s in %.2f s: %s", url, wait, retry)
                time.sleep(wait)
                attempt += 1

    # --- files -------------------------------------------------------------------------------

    def _read_file(self, path: Path, stamp: str | None) -> Fetched:
        try:
            current = file_stamp(path)
            if stamp is not None and current == stamp:
                return Fetched(None, current)
            size = path.stat().st_size
            if size > self.policy.max_bytes:
                raise FetchedTooLarge(
                    f"{path} is {size} bytes; the limit is {self.policy.max_bytes}"
                )
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
            self._client = httpx.Client(
                timeout=httpx.Timeout(p.read_timeout_s, connect=p.connect_timeout_s),
                follow_redirects=False,
                headers={"User-Agent": p.user_agent},
                transport=_guarded_transport(self.guard),
                trust_env=False,
            )
        return self._client

    def _backoff(self, attempt: int, hinted: float | None) -> float:
        p = self.policy
        base = p.backoff_s * (2**attempt) * (0.5 + random.random() / 2)
        return min(p.max_backoff_s, max(base, hinted or 0.0))

    def _attempt(self, url: str, stamp: str | None, deadline: float | None) -> Fetched:
        """One try, following redirects by hand so that each hop's scheme is checked (and
        each hop's address, by the transport)."""
        headers = _conditional_headers(stamp)
        for _ in range(self.policy.max_redirects + 1):
            check_url(url)
            try:
                with self._http().stream(
                    "GET", url, headers=headers, timeout=self._timeout(deadline)
                ) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        url = _redirect_target(url, response)
                        continue
                    return self._read_response(url, response, stamp, deadline)
            except httpx.TimeoutException as exc:
                raise _Retry(f"timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise _Retry(f"connection failed ({type(exc).__name__}: {exc})") from exc
        raise FetchError(f"more than {self.policy.max_redirects} redirects: {url}")

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        p = self.policy
        if deadline is None:
            return httpx.Timeout(p.read_timeout_s, connect=p.connect_timeout_s)
        left = deadline - _now()
        if left <= 0:
            raise FetchError(f"the fetch took over {p.deadline_s:g} s")
        return httpx.Timeout(min(p.read_timeout_s, left), connect=min(p.connect_timeout_s, left))

    def _read_response(
        self, url: str, response: httpx.Response, stamp: str | None, deadline: float | None
    ) -> Fetched:
        status = response.status_code
        if status == 304 and stamp is not None:
            return Fetched(None, stamp)
        if status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status}", _retry_after(response))
        if status != 200:
            raise FetchError(f"HTTP {status}: {url}")
        self._check_headers(url, response)
        return Fetched(self._body(url, response, deadline), _response_stamp(response))

    def _check_headers(self, url: str, response: httpx.Response) -> None:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(self.policy.content_types):
            what = "an accepted image type" if kind.startswith("image/") else "an image"
            raise FetchedNotAnImage(
                f"content type {kind or '(none)'!r} is not {what} "
                f"(accepted: {', '.join(self.policy.content_types)}): {url}"
            )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchedTooLarge(
                f"{length} bytes is over the {self.policy.max_bytes}-byte cap: {url}"
            )

    def _body(self, url: str, response: httpx.Response, deadline: float | None) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise FetchedTooLarge(f"body over the {self.policy.max_bytes}-byte cap: {url}")
            if deadline is not None and _now() > deadline:
                raise FetchError(f"the fetch took over {self.policy.deadline_s:g} s: {url}")
            chunks.append(chunk)
        return b"".join(chunks)


def check_url(url: str) -> None:
    """`FetchRefused` unless `url` is http(s) with a host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchRefused(f"unsupported scheme {scheme or '(none)'!r}: {url[:200]}")
    if not parts.hostname:
        raise FetchRefused(f"no host in {url[:200]!r}")


def check_url_address(url: str, guard: AddressGuard) -> None:
    """`check_url`, then the address check on the host as it resolves now (for URLs stored
    for later: the fetch checks again on every connection)."""
    check_url(url)
    parts = urlsplit(url)
    assert parts.hostname is not None
    guard.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def _now() -> float:
    return time.monotonic()


def _redirect_target(url: str, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise FetchError(f"HTTP {response.status_code} without a Location: {url}")
    target = urljoin(url, location)
    check_url(target)
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
