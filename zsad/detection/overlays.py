"""Overlays a person can read: the input with its anomaly map over it, and one contact sheet of the most
anomalous images (docs/method.md §7).

Every overlay uses one colour scale for the whole run, fixed from the calibration images before the first
image is scored: the colour layer is transparent at a typical normal value and grows more opaque towards the
top of the scale; the region above the map's threshold is outlined; a colour bar with the threshold marked
sits on the right. Inputs smaller than 256 px are enlarged by a whole factor (nearest neighbour) so that
the map can be seen; larger ones keep their own resolution.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zsad.data.transforms import BACKGROUND, to_rgb

MIN_SIDE = 256
MAX_ALPHA = 0.65
OUTLINE = (0, 255, 255)
TRUTH = (0, 220, 0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (always installed with zsad), else PIL's default font."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (OSError, ImportError):
        return ImageFont.load_default()


_LUT: list[np.ndarray] = []


def _colormap(values: np.ndarray) -> np.ndarray:
    """RGB uint8 of values in [0, 1] on matplotlib's 'inferno' (a 256-entry table: fast on large maps)."""
    if not _LUT:
        from matplotlib import colormaps

        _LUT.append((colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8))
    return _LUT[0][(np.clip(values, 0, 1) * 255).round().astype(np.uint8)]


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` that touch a pixel outside it (its boundary, one pixel wide)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


@dataclass
class OverlayStyle:
    """The run's colour scale and map threshold."""

    vmin: float
    vmax: float
    threshold: Optional[float]
    meaning: str = "anomaly map"


def overlay(image: Image.Image, amap: np.ndarray, style: OverlayStyle, truth: Optional[np.ndarray] = None, bit_depth: Optional[int] = None,
            background: Sequence[int] = BACKGROUND) -> Image.Image:
    """`image` (at its own resolution, enlarged when small) with `amap` (same height × width) over it and a colour bar;
    a ground-truth mask (same size), when given, is outlined in green. The image is converted as the network input
    is (`to_rgb` with the run's `bit_depth` and `background`), so a 16-bit image looks as its 8-bit twin does."""
    rgb = to_rgb(image, bit_depth, background)
    factor = max(1, int(np.ceil(MIN_SIDE / max(1, min(rgb.size)))))
    amap = np.asarray(amap, dtype=np.float64)
    if factor > 1:
        rgb = rgb.resize((rgb.width * factor, rgb.height * factor), Image.NEAREST)
        amap = np.kron(amap, np.ones((factor, factor)))
        truth = None if truth is None else np.kron(truth, np.ones((factor, factor), bool)).astype(bool)
    base = np.asarray(rgb, dtype=np.float32)
    scaled = np.clip((amap - style.vmin) / max(style.vmax - style.vmin, 1e-12), 0, 1).astype(np.float32)
    out = base + (_colormap(scaled).astype(np.float32) - base) * (scaled * MAX_ALPHA)[..., None]
    if style.threshold is not None:
        edge = _outline(amap > style.threshold)
        out[edge] = OUTLINE
    if truth is not None:
        out[_outline(truth)] = TRUTH
    picture = Image.fromarray(out.round().astype(np.uint8))
    return _with_colour_bar(picture, style)


def _with_colour_bar(picture: Image.Image, style: OverlayStyle) -> Image.Image:
    height = picture.height
    font = _font(max(10, min(16, height // 18)))
    bar_w, pad, label_w = 16, 8, 78
    canvas = Image.new("RGB", (picture.width + pad + bar_w + 4 + label_w, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    top, bottom = 8, height - 8
    ramp = _colormap(np.linspace(1, 0, max(bottom - top, 2)))[:, None, :].repeat(bar_w, axis=1)
    x0 = picture.width + pad
    canvas.paste(Image.fromarray(ramp), (x0, top))
    draw = ImageDraw.Draw(canvas)
    y_of = lambda v: top + (1 - (v - style.vmin) / max(style.vmax - style.vmin, 1e-12)) * (bottom - top)  # noqa: E731
    for value, text in ((style.vmax, f"{style.vmax:.3g}"), (style.vmin, f"{style.vmin:.3g}")):
        draw.text((x0 + bar_w + 4, y_of(value) - 6), text, fill=(0, 0, 0), font=font)
    if style.threshold is not None and style.vmin <= style.threshold <= style.vmax:
        y = y_of(style.threshold)
        draw.line([(x0 - 3, y), (x0 + bar_w + 3, y)], fill=OUTLINE, width=3)
        draw.text((x0 + bar_w + 4, y - 6), "threshold", fill=(0, 120, 140), font=font)
    return canvas


@dataclass(order=True)
class _Entry:
    score: float
    name: str = field(compare=False)
    p_value: Optional[float] = field(compare=False)
    thumbnail: Image.Image = field(compare=False)


def overlay_style(maps: Any) -> Optional[OverlayStyle]:
    """The overlay style of fitted map settings (colour scale and outline threshold); None without calibration."""
    return None if maps.vmin is None else OverlayStyle(maps.vmin, maps.vmax, maps.threshold)


class ContactSheet:
    """Keeps the `n` most anomalous overlays (as small thumbnails: memory stays flat) and draws them on one page."""

    def __init__(self, n: int = 16, thumb: int = 256, n_calibration: Optional[int] = None):
        self.n, self.thumb = n, thumb
        self.smallest_p = None if not n_calibration else 1.0 / (n_calibration + 1)  # p-values are multiples of 1/(n_cal + 1)
        self._heap: list[_Entry] = []

    def add(self, name: str, score: float, p_value: Optional[float], picture: Image.Image) -> None:
        if len(self._heap) >= self.n and score <= self._heap[0].score:
            return
        small = picture.copy()
        small.thumbnail((self.thumb + 110, self.thumb), Image.LANCZOS)
        entry = _Entry(float(score), name, p_value, small)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def save(self, path: Path, title: str) -> Optional[Path]:
        """One PNG: the kept images from most to least anomalous, each with file name, score and p-value."""
        if not self._heap:
            return None
        entries = sorted(self._heap, reverse=True)
        tiles = [(f"#{k + 1} {e.name if len(e.name) <= 40 else '…' + e.name[-39:]}", f"score {e.score:.4g}" + self._p_text(e.p_value), e.thumbnail)
                 for k, e in enumerate(entries)]
        return labelled_sheet(tiles, path, title, cols=min(4, len(tiles)), thumb=self.thumb)


    def _p_text(self, p: Optional[float]) -> str:
        """`p = 0.12`, or `p ≤ 1/(n+1)` at the smallest p-value, which only says the score is above every calibration score."""
        if p is None:
            return ""
        if self.smallest_p is not None and p <= self.smallest_p * (1 + 1e-9):
            return f"   p ≤ 1/{round(1 / self.smallest_p)} (above all calibration)"
        return f"   p = {p:.3g}"


def labelled_sheet(tiles: list[tuple[str, str, Image.Image]], path: Path, title: str, cols: int = 3, thumb: int = 256) -> Path:
    """One PNG of (caption, second line, picture) tiles under a title, row by row."""
    rows = -(-len(tiles) // cols)
    cell_w, cell_h, head = thumb + 120, thumb + 48, 40
    sheet = Image.new("RGB", (cols * cell_w, max(rows, 1) * cell_h + head), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 10), title, fill=(0, 0, 0), font=_font(16))
    font = _font(13)
    for k, (caption, second, picture) in enumerate(tiles):
        small = picture.copy()
        small.thumbnail((thumb + 110, thumb), Image.LANCZOS)
        x, y = (k % cols) * cell_w + 5, (k // cols) * cell_h + head
        sheet.paste(small, (x, y))
        caption = caption if len(caption) <= 44 else caption[:43] + "…"
        draw.text((x, y + small.height + 3), caption, fill=(0, 0, 0), font=font)
        draw.text((x, y + small.height + 20), second, fill=(60, 60, 60), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
