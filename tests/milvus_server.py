"""milvus-lite for the tests: a real Milvus gRPC server (the pure-Python milvus-lite 3.x from
PyPI) started in a thread of the test process on a free port, so the test, the code under
test and any subprocess it starts all reach it at one `http://127.0.0.1:PORT` URI, as they
would a cluster. Start-up takes milliseconds; each test gets its own collection prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.milvus_index import MilvusIndexStore


@contextmanager
def lite_server(data_dir: Path) -> Iterator[str]:
    """A milvus-lite server on `data_dir`; yields its URI and stops it afterwards."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    server, db, port = start_server_in_thread(data_dir=str(data_dir), host="127.0.0.1", port=0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=0)
        db.close()


def unique_prefix() -> str:
    """A collection prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def lite_store(uri: str, *, poll_s: float = 0.0) -> MilvusIndexStore:
    """A Milvus index store on the server at `uri`, under a fresh prefix."""
    return MilvusIndexStore(uri, prefix=unique_prefix(), poll_s=poll_s)
