"""Weight-file helpers the backends share: a file's sha256, a quick reachability probe before
anything downloads, and a socket time-out for downloads. No backend is imported here."""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROBE_TIMEOUT_S = 3.0  # reachability probe before a backend downloads at load time


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def probe_url(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server of `url` answers an HTTP HEAD within `timeout_s`; else why not.

    Any HTTP answer (even 404) counts as reachable. Proxies from the environment are honoured.
    The request runs in a daemon thread joined with the timeout, so a stalled DNS lookup cannot
    hold up the caller either.
    """
    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    outcome: list[str | None] = []

    def attempt() -> None:
        request = urllib.request.Request(root, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered with an error status: it is reachable
        except (urllib.error.URLError, OSError, ValueError) as exc:
            outcome.append(str(getattr(exc, "reason", exc)))

    thread = threading.Thread(target=attempt, name="roomlens-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"{parts.netloc} did not answer within {timeout_s:g} s"
    reason = outcome[0]
    return None if reason is None else f"{parts.netloc} is unreachable ({reason})"


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened without an explicit timeout (urllib downloads) give up after `seconds`."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
