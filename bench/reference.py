"""The machine's speed reference, printed by every bench: EfficientNet-Lite0 (fp32, in
onnxruntime, one intra-op thread) on one 224 px image, the median of 20 runs. About 9 ms on
the slower development VM class and 7 ms on the faster one; scale a bench's figures by it
to compare machines."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image


def lite0_reference_ms(photo: Path, runs: int = 20) -> float:
    """Lite0 (fp32, onnxruntime, one intra-op thread) on one image: the median ms of `runs`."""
    from search.models.efficientnet import EfficientNetLiteEmbedder

    model = EfficientNetLiteEmbedder(0, threads=1, runtime="onnx")
    with Image.open(photo) as image:
        rgb = image.convert("RGB")
    for _ in range(3):
        model.embed([rgb])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.embed([rgb])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def reference_line(photo: Path) -> str:
    return f"speed reference: Lite0 fp32, 1 image, 1 thread: {lite0_reference_ms(photo):.1f} ms"
