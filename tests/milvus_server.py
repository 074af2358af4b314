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

# pymilvus pings idle connections; milvus-lite's gRPC server keeps grpc's defaults (a ping
# at most every 5 minutes without data, then GOAWAY "Too many pings"), which killed the
# connections of a server shared by a long test session. A cluster's server allows them.
_PING_OPTIONS = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


@contextmanager
def lite_server(data_dir: Path) -> Iterator[str]:
    """A milvus-lite server on `data_dir`; yields its URI and stops it afterwards. Built as
    milvus-lite's `start_server_in_thread` builds it, with pings allowed."""
    from concurrent import futures

    import grpc
    from milvus_lite.adapter.grpc.server import _MAX_MESSAGE_SIZE
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2_grpc

    db = MilvusLite(str(data_dir))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=10),
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", _MAX_MESSAGE_SIZE),
            *_PING_OPTIONS,
        ],
    )
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=0)
        db.close()
        db.close()


def unique_prefix() -> str:
    """A collection prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def lite_store(uri: str, *, poll_s: float = 0.0) -> MilvusIndexStore:
    """A Milvus index store on the server at `uri`, under a fresh prefix."""
    return MilvusIndexStore(uri, prefix=unique_prefix(), poll_s=poll_s)
