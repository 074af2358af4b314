"""Dominant colours of an object from its mask's pixels, named with 12 basic colour terms.

In the manner of AWS Rekognition's DominantColors: each colour has a basic name (like its
SimplifiedColor, one of VOCABULARY), the nearest CSS3 colour name, a hex code and its share of
the object's pixels. Only the mask's pixels count, never the rest of its box. All colour work
is in CIELAB (D65, OpenCV's conversion).

1. Edges: the mask is eroded by ERODE_FRACTION of the square root of its area (at least 1 px),
   since boundary pixels mix object and background; a mask too thin to keep a quarter of its
   pixels is used whole. At most MAX_SAMPLES pixels are sampled (seeded: deterministic).
2. White point: the photo's illuminant is estimated from its brightest 1% of pixels (white
   surfaces and specular highlights both reflect the colour of the light) and, when that is a
   plausible light (L* >= 50; a cast of CIELAB chroma 1..MAX_CAST, about 3500 K, with a hue
   along the daylight / blackbody locus: warm yellow-orange or cool blue), the pixels are
   adapted to D65 with a Bradford (von Kries) transform, so that a warm studio or a lamp-lit
   room does not turn white into beige. A photo whose brightest pixels are coloured otherwise
   (a red or green surface) or too strongly is left as it is; a shot on white is unchanged.
3. Tails: the darkest and the brightest TAIL of the pixels (cracks, cast shadows, glints) go.
4. Shading: the pixels are clustered (k-means, lightness at half weight) and clusters that
   differ only by shading are one material. Shading scales (L* + 16, a*, b*) by one factor, so
   a darker cluster belongs to a lighter one when its luminance is at least SHADE_RATIO of it
   (a 2.5 : 1 lighting ratio, what a key and fill light give) and its chromaticity
   (a*, b*) / (L* + 16) agrees within SHADE_CHROMA, or, for coloured clusters, its hue agrees
   within SHADE_HUE and its saturation within GLOSS_RATIO (gloss dilutes the lit side). A
   larger gap is another material (black legs under a white seat), not a shadow.
5. Highlights and naming: a material is named by its lit colour, the LIT_QUANTILE of its
   lightness with its median chromaticity, so a white chair half in shadow is white, not grey,
   while a small specular highlight (above the quantile) does not lighten it. Colours with a
   chroma below `achromatic_chroma(L*)` (ACHROMATIC_CHROMA, more when dark, and up to ~10 near
   white, where ivory and off-white are still white) are black (L* < BLACK_BELOW), grey or
   white (L* >= WHITE_FROM). Others are named by CIELAB hue sector, with boundaries about
   halfway between the focal colours of the basic terms (Berlin & Kay 1969; Sturges & Whitfield
   1995), then by lightness and chroma within a sector: brown is a dark orange, red or yellow,
   beige a light low-chroma orange or yellow, pink a light red or a rose. Turquoise and teal
   fall in the blue sector.
6. Materials with one name are added up and the names sorted by pixel share; names under
   MIN_SHARE are left out. A colour's hex is its largest material's lit colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

VOCABULARY = (
    "black",
    "white",
    "grey",
    "brown",
    "beige",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
)

MAX_SAMPLES = 4000  # pixels sampled per mask
ERODE_FRACTION = 0.01  # erosion radius, as a fraction of sqrt(mask area)
TAIL = 0.02  # fraction of the darkest, and of the brightest, pixels dropped
CLUSTERS = 8  # k-means clusters before grouping them into materials
KMEANS_FIT = 1500  # pixels the k-means centres are fitted on
SHADE_RATIO = 0.4  # min luminance of a shadow relative to the lit part of its material
SHADE_CHROMA = 6.0  # max chromaticity difference (a*b* units at the lit L*) within a material
SHADE_HUE = 12.0  # max hue difference (degrees) within a coloured material
GLOSS_RATIO = 2.0  # max saturation ratio within a coloured material
LIT_QUANTILE = 0.8  # lightness quantile of a material taken as its lit colour
MIN_SHARE = 0.02  # names with a smaller pixel share are not reported
MAX_CAST = 45.0  # max CIELAB chroma of a light's cast that is corrected (about 3500 K)
# CIELAB hue ranges of the colour of light sources relative to D65, along the blackbody and
# daylight loci: warm (blackbody 2700-5000 K at 68-72 degrees, D50 at 82) or cool (8000 K and
# up, ~280). A bright pixel of another hue (green, red, magenta) is a coloured surface.
WARM_LIGHT_HUES = (55.0, 100.0)
COOL_LIGHT_HUES = (250.0, 305.0)

ACHROMATIC_CHROMA = 7.0  # below this chroma (at 40 <= L* <= 85) a colour is black, grey or white
DARK_SLOPE = 0.15  # more achromatic chroma per L* unit below 40
LIGHT_SLOPE = 0.3  # more achromatic chroma per L* unit above 85
BLACK_BELOW = 35.0  # lit L* under which an achromatic colour is black
WHITE_FROM = 82.0  # lit L* from which an achromatic colour is white
ROSE_PINK_FROM = 45.0  # L* from which a colour in the rose sector is pink, not red
# Where each hue sector starts (CIELAB hue angle, degrees). Focal colours sit near red 32,
# orange 52, yellow 95, green 140, blue 250, purple 325, pink 0; blue reaches to 310 because
# the sRGB blue primary itself is at 306.
RED_HUE = 20.0
ORANGE_HUE = 42.0
YELLOW_HUE = 75.0
GREEN_HUE = 110.0
BLUE_HUE = 180.0
PURPLE_HUE = 310.0
ROSE_HUE = 345.0  # rose, crimson and magenta-red, up to RED_HUE

_SEED = 0
_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_BRADFORD = np.array(
    [
        [0.8951, 0.2664, -0.1614],
        [-0.7502, 1.7135, 0.0367],
        [0.0389, -0.0685, 1.0296],
    ]
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DominantColor:
    """One dominant colour: basic `name`, nearest CSS3 name, "#rrggbb" and pixel share."""

    name: str
    css: str
    hex: str
    share: float

    def as_dict(self) -> dict[str, str | float]:
        return {"name": self.name, "css": self.css, "hex": self.hex, "share": round(self.share, 3)}


# --------------------------------------------------------------------------- conversions


def _decode(srgb: FloatArray) -> FloatArray:
    """sRGB 0..1 to linear RGB."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _encode(linear: FloatArray) -> FloatArray:
    """Linear RGB to sRGB 0..1 (clipped)."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def srgb_to_lab(srgb: FloatArray) -> FloatArray:
    """(n, 3) sRGB in 0..1 to (n, 3) CIELAB (D65)."""
    pixels = np.asarray(srgb, dtype=np.float32).reshape(-1, 1, 3)
    return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB), dtype=np.float64).reshape(-1, 3)


def lab_to_srgb(lab: FloatArray) -> FloatArray:
    """(n, 3) CIELAB (D65) to (n, 3) sRGB in 0..1 (clipped to the gamut)."""
    pixels = np.asarray(lab, dtype=np.float32).reshape(-1, 1, 3)
    rgb = np.asarray(cv2.cvtColor(pixels, cv2.COLOR_LAB2RGB), dtype=np.float64).reshape(-1, 3)
    return np.clip(rgb, 0.0, 1.0)


def _luminance(lightness: FloatArray) -> FloatArray:
    """Relative luminance Y from CIELAB L*."""
    f = (np.asarray(lightness, dtype=np.float64) + 16.0) / 116.0
    return np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))


def _hex(lab: FloatArray) -> str:
    r, g, b = (int(round(255 * v)) for v in lab_to_srgb(lab.reshape(1, 3))[0])
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------- white point

_DECODE_LUT = _decode(np.arange(256) / 255.0)


def estimate_white(rgb: npt.NDArray[np.uint8]) -> FloatArray | None:
    """The photo's illuminant as linear RGB (from its brightest 1% of pixels), or None when
    that is no plausible light: too dark, already neutral, off the daylight / blackbody
    locus, or a cast above MAX_CAST."""
    height, width = rgb.shape[:2]
    step = max(1, int(math.sqrt(height * width / 10000)))
    linear = _DECODE_LUT[rgb[::step, ::step].reshape(-1, 3)]
    luminance = linear @ _RGB_TO_XYZ[1]
    cut = len(luminance) - max(1, len(luminance) // 100)
    white = linear[luminance >= np.partition(luminance, cut)[cut]].mean(axis=0)
    lightness, a, b = srgb_to_lab(_encode(white).reshape(1, 3))[0]
    chroma = math.hypot(a, b)
    hue = math.degrees(math.atan2(b, a)) % 360
    on_locus = any(low <= hue <= high for low, high in (WARM_LIGHT_HUES, COOL_LIGHT_HUES))
    if lightness < 50 or chroma < 1.0 or chroma > MAX_CAST or not on_locus:
        return None
    return np.asarray(white, dtype=np.float64)


def adapt(linear: FloatArray, white: FloatArray) -> FloatArray:
    """Linear RGB pixels under illuminant `white` (linear RGB) seen under D65 (Bradford)."""
    source = _BRADFORD @ (_RGB_TO_XYZ @ white)
    target = _BRADFORD @ (_D65 * float(_RGB_TO_XYZ[1] @ white))
    cone = np.linalg.inv(_BRADFORD) @ np.diag(target / source) @ _BRADFORD
    matrix = np.linalg.inv(_RGB_TO_XYZ) @ cone @ _RGB_TO_XYZ
    return np.asarray(linear @ matrix.T, dtype=np.float64)


# --------------------------------------------------------------------------- naming


def achromatic_chroma(lightness: float) -> float:
    """The chroma below which a colour of this lightness reads as black, grey or white."""
    # Dark colours need more chroma to look coloured (and sensor noise is larger there); near
    # white, tints up to ~10 (ivory, linen, off-white) are still called white.
    return (
        ACHROMATIC_CHROMA
        + DARK_SLOPE * max(0.0, 40.0 - lightness)
        + LIGHT_SLOPE * max(0.0, lightness - 85.0)
    )


def basic_name(lightness: float, a: float, b: float) -> str:
    """The basic colour term (one of VOCABULARY) of one CIELAB colour."""
    chroma = math.hypot(a, b)
    hue = math.degrees(math.atan2(b, a)) % 360
    if chroma < achromatic_chroma(lightness):
        if lightness >= WHITE_FROM:
            return "white"
        return "black" if lightness < BLACK_BELOW else "grey"
    if BLUE_HUE <= hue < PURPLE_HUE:
        return "blue"
    if GREEN_HUE <= hue < BLUE_HUE:
        return "green"
    if PURPLE_HUE <= hue < ROSE_HUE:
        return "pink" if lightness >= 72 and hue >= 330 else "purple"
    if hue >= ROSE_HUE or hue < RED_HUE:  # crimson to rose
        return "pink" if lightness >= ROSE_PINK_FROM else "red"
    if hue < ORANGE_HUE:  # the reds
        if lightness >= 65:  # a light red is pink, or orange when vivid
            return "pink" if chroma < 55 else "orange"
        return "brown" if chroma < 35 else "red"
    if hue < YELLOW_HUE:  # the oranges
        if chroma >= 45 and lightness >= 50:
            return "orange"
        return "beige" if lightness >= 70 and chroma < 35 else "brown"
    # the yellows
    if chroma >= 40 and lightness >= 60:
        return "yellow"
    if lightness >= 65:
        return "beige"
    return "green" if hue >= 100 else "brown"


@lru_cache(maxsize=1)
def _css_table() -> tuple[tuple[str, ...], FloatArray]:
    import webcolors

    names: dict[str, str] = {}
    for name in webcolors.names("css3"):
        hex_code = webcolors.name_to_hex(name)
        names.setdefault(hex_code, webcolors.hex_to_name(hex_code))
    rgb = np.array([webcolors.hex_to_rgb(h) for h in names], dtype=np.float64) / 255.0
    return tuple(names.values()), srgb_to_lab(rgb)


def css_name(lab: FloatArray) -> str:
    """The CSS3 colour name nearest (CIELAB distance) to one CIELAB colour."""
    names, table = _css_table()
    return names[int(np.argmin(((table - np.asarray(lab).reshape(1, 3)) ** 2).sum(axis=1)))]


# --------------------------------------------------------------------------- pixels


def _sample(rgb: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """Up to MAX_SAMPLES (n, 3) pixels of the mask, eroded to drop its edge."""
    mask8 = np.ascontiguousarray(mask).view(np.uint8)
    x, y, w, h = cv2.boundingRect(mask8)
    area = int(cv2.countNonZero(mask8[y : y + h, x : x + w])) if w and h else 0
    if area == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    radius = max(1, round(ERODE_FRACTION * math.sqrt(area)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    region = mask8[y : y + h, x : x + w]
    eroded = np.asarray(
        cv2.erode(region, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0), dtype=np.uint8
    )
    if cv2.countNonZero(eroded) >= 0.25 * area:
        region = eroded
    local = np.flatnonzero(region)
    if len(local) > MAX_SAMPLES:
        rng = np.random.default_rng(_SEED)
        local = local[np.sort(rng.choice(len(local), MAX_SAMPLES, replace=False))]
    flat = (local // w + y) * rgb.shape[1] + (local % w + x)
    return np.asarray(np.ascontiguousarray(rgb).reshape(-1, 3)[flat], dtype=np.uint8)


def _lab_pixels(rgb: npt.NDArray[np.uint8], pixels: npt.NDArray[np.uint8]) -> FloatArray:
    """The sampled pixels in CIELAB, adapted to D65 when the photo has a plausible cast."""
    srgb = pixels.astype(np.float64) / 255.0
    white = estimate_white(rgb)
    if white is not None:
        srgb = _encode(adapt(_decode(srgb), white))
    lab = srgb_to_lab(srgb)
    low, high = np.quantile(lab[:, 0], [TAIL, 1.0 - TAIL])
    kept = lab[(lab[:, 0] >= low) & (lab[:, 0] <= high)]
    return kept if len(kept) else lab


def _kmeans(points: FloatArray, k: int, iterations: int = 10) -> npt.NDArray[np.intp]:
    """Cluster labels of `points`: k-means++ seeding and Lloyd iterations on at most
    KMEANS_FIT points spread over the sample, then every point to its nearest centre."""
    rng = np.random.default_rng(_SEED)
    x = points.astype(np.float32)
    fit = x[:: max(1, -(-len(x) // KMEANS_FIT))]
    centres = [fit[rng.integers(len(fit))]]
    nearest = ((fit - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 1e-6:  # fewer distinct colours than k
            break
        pick = int(np.searchsorted(np.cumsum(nearest), rng.random() * total))
        centres.append(fit[min(pick, len(fit) - 1)])
        nearest = np.minimum(nearest, ((fit - centres[-1]) ** 2).sum(axis=1))
    centre = np.array(centres)
    labels = np.full(len(fit), -1, dtype=np.intp)
    for _ in range(iterations):
        new = _nearest(fit, centre)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=len(centre))
        for d in range(fit.shape[1]):
            sums = np.bincount(labels, weights=fit[:, d], minlength=len(centre))
            centre[:, d] = np.where(counts > 0, sums / np.maximum(counts, 1), centre[:, d])
    return _nearest(x, centre)


def _nearest(x: npt.NDArray[np.float32], centre: npt.NDArray[np.float32]) -> npt.NDArray[np.intp]:
    distances = (x**2).sum(axis=1, keepdims=True) - 2.0 * x @ centre.T + (centre**2).sum(axis=1)
    return np.asarray(distances.argmin(axis=1), dtype=np.intp)


@dataclass(frozen=True)
class _Material:
    count: int
    lab: FloatArray  # the lit colour


def _materials(lab: FloatArray) -> list[_Material]:
    """Clusters of `lab` grouped into materials (clusters that differ only by shading)."""
    labels = _kmeans(lab * np.array([0.5, 1.0, 1.0]), CLUSTERS)
    clusters = [lab[labels == j] for j in np.unique(labels)]
    clusters.sort(key=lambda c: -float(np.median(c[:, 0])))
    groups: list[tuple[FloatArray, list[FloatArray]]] = []  # (reference colour, members)
    for members in clusters:
        colour = np.median(members, axis=0)
        for reference, group in groups:
            if _same_material(colour, reference):
                group.append(members)
                break
        else:
            groups.append((colour, [members]))
    return [_lit(np.concatenate(group)) for _, group in groups]


def _same_material(darker: FloatArray, lit: FloatArray) -> bool:
    """Whether `darker` can be `lit` in shadow: a lighting ratio in range and the same
    chromaticity, or for coloured pairs the same hue with a saturation changed by gloss."""
    ratio = _luminance(darker[0]) / max(float(_luminance(lit[0])), 1e-9)
    if ratio < SHADE_RATIO:
        return False
    scale = lit[0] + 16.0
    chroma_dark = darker[1:] / (darker[0] + 16.0) * scale  # `darker` brought to lit's L*
    chroma_lit = lit[1:]
    if float(np.hypot(*(chroma_dark - chroma_lit))) <= SHADE_CHROMA:
        return True
    c_dark, c_lit = float(np.hypot(*chroma_dark)), float(np.hypot(*chroma_lit))
    if min(c_dark, c_lit) < SHADE_CHROMA:
        return False
    hue_gap = abs(math.atan2(chroma_dark[1], chroma_dark[0]) - math.atan2(lit[2], lit[1]))
    hue_gap = math.degrees(min(hue_gap, 2 * math.pi - hue_gap))
    return hue_gap <= SHADE_HUE and 1 / GLOSS_RATIO <= c_dark / c_lit <= GLOSS_RATIO


def _lit(pixels: FloatArray) -> _Material:
    """A material's lit colour: its LIT_QUANTILE lightness with its median chromaticity."""
    lightness = float(np.quantile(pixels[:, 0], LIT_QUANTILE))
    chromaticity = np.median(pixels[:, 1:] / (pixels[:, :1] + 16.0), axis=0)
    lab = np.array([lightness, *(chromaticity * (lightness + 16.0))])
    return _Material(len(pixels), lab)


# --------------------------------------------------------------------------- public


def dominant_colors(
    rgb: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], k: int = 3
) -> list[DominantColor]:
    """Up to `k` dominant colours of the pixels of `mask` in `rgb` (H, W, 3 uint8), largest
    share first (see the module docstring for the method). An empty mask gives []."""
    rgb = np.asarray(rgb)
    mask = np.asarray(mask, dtype=bool)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"need rgb (H, W, 3) and mask (H, W), got {rgb.shape}, {mask.shape}")
    rgb = rgb.astype(np.uint8, copy=False)
    pixels = _sample(rgb, mask)
    if len(pixels) == 0 or k <= 0:
        return []
    lab = _lab_pixels(rgb, pixels)
    totals: dict[str, int] = {}
    colours: dict[str, tuple[int, FloatArray]] = {}
    for material in _materials(lab):
        name = basic_name(*(float(v) for v in material.lab))
        totals[name] = totals.get(name, 0) + material.count
        if material.count > colours.get(name, (0, material.lab))[0]:
            colours[name] = (material.count, material.lab)
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: (-item[1], VOCABULARY.index(item[0])))
    return [
        DominantColor(name, css_name(colours[name][1]), _hex(colours[name][1]), count / total)
        for name, count in ranked[:k]
        if count / total >= MIN_SHARE or name == ranked[0][0]
    ]
