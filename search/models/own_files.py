"""Which weight file the settings pick: a committed one, checked against the sha256 on its
card (data/models/README.md), or the user's own, named in the settings and used as it is.

Own files are what `roomlens train masks --out` and `roomlens quantize --out` make from a
user's data: `models.mask_weights` names a mask head, `models.int8_dir` a directory of int8
copies (a copy missing there is taken from data/models/ as usual).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.config import ModelSettings


@dataclass(frozen=True)
class WeightFile:
    path: Path
    card_sha256: str | None  # the sha256 the file must have; None: the user's own file

    @property
    def own(self) -> bool:
        return self.card_sha256 is None


def int8_file(settings: ModelSettings, name: str, card_sha256: str) -> WeightFile:
    """The int8 copy `name`: from `int8_dir` where it is there, else the committed one."""
    if settings.int8_dir is not None and (settings.int8_dir / name).is_file():
        return WeightFile(settings.int8_dir / name, None)
    return WeightFile(settings.models_dir / name, card_sha256)


def mask_head_file(settings: ModelSettings) -> WeightFile:
    """The box-mask head's weights: `mask_weights`, else the committed file."""
    from search.models.boxmask import WEIGHTS_FILE, WEIGHTS_SHA256

    if settings.mask_weights is not None:
        return WeightFile(settings.mask_weights, None)
    return WeightFile(settings.models_dir / WEIGHTS_FILE, WEIGHTS_SHA256)


def lite_int8_file(settings: ModelSettings, variant: int) -> WeightFile | None:
    """The int8 copy of the pretrained EfficientNet-Lite `variant`, where one is made."""
    from search.models.efficientnet import INT8_FILES

    entry = INT8_FILES.get(variant)
    return None if entry is None else int8_file(settings, *entry)
