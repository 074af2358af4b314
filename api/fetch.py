"""Fetching a shopper's photo from an `image_url`: http(s) only, bounded in time and size."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from search.errors import ImageTooLarge, InvalidInput, UnsupportedImageType

log = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
SCHEMES = ("http", "https")


class ImageFetchFailed(InvalidInput):
    """An `image_url` that could not be fetched (unreachable, error status, too slow)."""

    code = "image_fetch_failed"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits on fetching `image_url`s.

    `timeout_s` bounds the whole fetch, redirects included. With `allow_private` False, URLs
    whose host resolves to a loopback, private, link-local or otherwise non-public address
    are refused (the server must not be a way into its own network).
    """

    max_bytes: int
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False
    content_types: frozenset[str] = IMAGE_CONTENT_TYPES


async def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The bytes at `url`, or a typed error: 400 for a bad or unreachable URL, 413 over
    `max_bytes`, 415 for a content type other than JPEG, PNG or WebP."""
    try:
        with anyio.fail_after(policy.timeout_s):
            return await _fetch(url, policy)
    except TimeoutError as exc:
        raise ImageFetchFailed(f"fetching {url} took over {policy.timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise ImageFetchFailed(f"could not fetch {url}: {exc}") from exc


async def _fetch(url: str, policy: FetchPolicy) -> bytes:
    timeout = httpx.Timeout(policy.timeout_s)
    headers = {"Accept": ", ".join(sorted(policy.content_types))}
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as http:
        for _ in range(policy.max_redirects + 1):
            await check_url(url, allow_private=policy.allow_private)
            async with http.stream("GET", url, headers=headers) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return await _body(url, response, policy)
    raise ImageFetchFailed(f"more than {policy.max_redirects} redirects fetching the image")


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise `InvalidInput` unless `url` is http(s) with a host (that resolves to public
    addresses only, unless `allow_private`)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise InvalidInput(f"image_url must be an http(s) URL with a host, not {url[:200]!r}")
    if allow_private:
        return
    try:
        infos = await anyio.getaddrinfo(parts.hostname, parts.port or 0, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageFetchFailed(f"cannot resolve {parts.hostname}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise InvalidInput(f"image_url host {parts.hostname} is not a public address")


async def _body(url: str, response: httpx.Response, policy: FetchPolicy) -> bytes:
    if response.status_code != 200:
        raise ImageFetchFailed(f"{url} answered HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in policy.content_types:
        raise UnsupportedImageType(
            f"{url} is {content_type or 'of no content type'}; "
            f"accepted: {', '.join(sorted(policy.content_types))}"
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise ImageTooLarge(f"{url} is {declared} bytes; the limit is {policy.max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > policy.max_bytes:
            raise ImageTooLarge(f"{url} is over the limit of {policy.max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
