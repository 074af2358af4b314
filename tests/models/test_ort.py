"""The one way onnxruntime CPU sessions are made: its options (one arena shared by every
session, no memory patterns: docs/PERFORMANCE.md), big batches run a few rows at a time,
and such sessions still answer every input shape as a default session does."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from search.models.ort import MAX_BATCH, BatchedSession, cpu_session, release_free_memory

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(axes: dict[int, str] | None) -> bytes:
    """A small convolutional network as ONNX bytes, `axes` of its input and output dynamic."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 3, 16, 16),),
            buffer,  # type: ignore[arg-type]
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes} if axes else None,
            dynamo=False,
        )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model() -> bytes:
    """Dynamic batch and spatial size."""
    return _export({0: "n", 2: "h", 3: "w"})


def test_sessions_share_one_arena_and_plan_no_memory_patterns(model: bytes) -> None:
    options = cpu_session(model, threads=1).get_session_options()
    assert options.get_session_config_entry("session.use_env_allocators") == "1"
    assert options.enable_cpu_mem_arena  # the shared one: an arena is what keeps runs fast
    assert not options.enable_mem_pattern  # a pattern (and its block) is kept per shape
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_every_input_shape_gives_what_a_default_session_gives(model: bytes) -> None:
    ours, again = cpu_session(model, threads=1), cpu_session(model, threads=0)  # one arena
    default = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n, h, w in [(1, 16, 16), (3, 40, 24), (2, 17, 33), (1, 16, 16), (5, 9, 64)]:
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        (want,) = default.run(None, {"x": x})
        assert want.shape == (n, 4, (h - 1) // 2, (w - 1) // 2)
        for session in (ours, again):
            (got,) = session.run(None, {"x": x})
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_big_batch_runs_a_few_rows_at_a_time_with_the_same_results(model: bytes) -> None:
    whole = cpu_session(model, threads=1, max_batch=0)
    for max_batch in (1, 3, MAX_BATCH):
        session = cpu_session(model, threads=1, max_batch=max_batch)
        assert isinstance(session, BatchedSession) and session.max_batch == max_batch
        for n in (1, max_batch, max_batch + 1, 2 * max_batch + 1):
            x = np.random.default_rng(n).standard_normal((n, 3, 20, 12)).astype(np.float32)
            (got,) = session.run(None, {"x": x})
            (want,) = whole.run(None, {"x": x})
            assert got.shape == (n, 4, 9, 5)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert cpu_session(model, threads=1).max_batch == MAX_BATCH


def test_a_model_without_a_leading_batch_runs_whole() -> None:
    fixed = cpu_session(_export(None), threads=1, max_batch=2)
    assert fixed.max_batch == 0
    (y,) = fixed.run(None, {"x": np.zeros((1, 3, 16, 16), dtype=np.float32)})
    assert y.shape == (1, 4, 7, 7)


def test_release_free_memory_runs_anywhere() -> None:
    release_free_memory()  # glibc's malloc_trim here; nothing where the C library lacks it
