"""A small stacked bar chart as a PNG, written by hand (zlib and struct): a digest's runs per
hour or day. No plotting library: the image is a few hundred bars of flat colour, and a chart
library (matplotlib) would weigh more than the notifier. The axis labels are in the HTML beside
the image (text in pixels would need a font)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

Colour = tuple[int, int, int]
BACKGROUND: Colour = (255, 255, 255)
AXIS: Colour = (120, 120, 120)
GRID: Colour = (232, 232, 232)


def png(width: int, height: int, pixels: bytearray) -> bytes:
    """An 8-bit RGB PNG of `pixels` (rows top to bottom, 3 bytes a pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    stride = width * 3
    raw = b"".join(b"\x00" + bytes(pixels[y * stride:(y + 1) * stride]) for y in range(height))  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(BACKGROUND) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
        """Fill [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(x0, 0), min(x1, self.width)
        y0, y1 = max(y0, 0), min(y1, self.height)
        if x0 >= x1:
            return
        row = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start:start + len(row)] = row

    def to_png(self) -> bytes:
        return png(self.width, self.height, self.pixels)


def stacked_bars(layers: Sequence[tuple[Sequence[int], Colour]], width: int = 560, height: int = 160) -> bytes:
    """Bars of equal width, one per position, each stacked bottom-up from `layers`
    [(values, colour), ...] (all of the same length); the tallest fills the height."""
    count = max((len(values) for values, _ in layers), default=0)
    canvas = Canvas(width, height)
    left, bottom, top = 4, height - 4, 6
    plot_h = bottom - top
    totals = [sum(values[i] for values, _ in layers if i < len(values)) for i in range(count)]
    peak = max(totals, default=0)
    for quarter in (1, 2, 3, 4):  # guide lines at a quarter of the peak each
        y = bottom - plot_h * quarter // 4
        canvas.rect(left, y, width - 2, y + 1, GRID)
    if count and peak:
        slot = (width - left - 2) / count
        bar = max(int(slot * 0.8), 1)
        for i in range(count):
            x = left + int(i * slot) + max(int((slot - bar) / 2), 0)
            y = bottom
            for values, colour in layers:
                value = values[i] if i < len(values) else 0
                if value <= 0:
                    continue
                h = max(round(plot_h * value / peak), 1)
                canvas.rect(x, y - h, x + bar, y, colour)
                y -= h
    canvas.rect(left, bottom, width - 2, bottom + 1, AXIS)
    canvas.rect(left, top, left + 1, bottom + 1, AXIS)
    return canvas.to_png()


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG (checks the signature)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
