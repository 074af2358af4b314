"""onnxruntime sessions on the CPU, made one way for every ONNX-backed model."""

from __future__ import annotations

import onnxruntime as ort


def cpu_session(model: bytes | str, threads: int) -> ort.InferenceSession:
    """A CPU inference session with every graph optimisation; `threads` > 0 pins the intra-op
    thread count (0 keeps onnxruntime's default: one per physical core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: a spinning pool steals the cores from
    # the numpy, faiss and torch work between two model calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
