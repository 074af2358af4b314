"""Explicit torch device and thread settings."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> str:
    """`auto` becomes `cuda` when a GPU is visible, else `cpu`; anything else is kept."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_torch_threads(threads: int) -> None:
    """Use `threads` intra-op threads (0 keeps torch's default: all cores)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
