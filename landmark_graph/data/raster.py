"""Anti-aliased coverage of polygons and polylines in numpy, batched over shapes: the synthetic
faces' rasteriser. Pixel centres sit at integer coordinates; every shape is drawn in a window of
its own whose top-left pixel is given, so the shapes of one face rasterise in one pass.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["fill_polygons", "stroke_polylines"]


def fill_polygons(polygons: list[np.ndarray], origins: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Coverage ``float32[P, h, w]`` in ``[0, 1]`` of closed polygons (nonzero winding), in one pass.

    Polygon ``p`` is rasterised in the window of ``shape = (h, w)`` pixels whose top-left pixel is
    ``origins[p] = (x0, y0)``. Pixel centres sit at integer coordinates. Each edge crossing a
    row's centre adds its signed winding at the crossing, spread over two pixels by the
    fractional position (horizontal anti-aliasing); a cumulative sum along each row gives the
    winding number.
    """
    height, width = shape
    lengths = [len(p) for p in polygons]
    owner = np.repeat(np.arange(len(polygons)), lengths)
    start = np.concatenate(polygons).astype(np.float64) - origins[owner]
    nxt = np.arange(1, len(start) + 1)
    nxt[np.cumsum(lengths) - 1] -= lengths  # each polygon closes on itself
    end = start[nxt]
    rows = np.arange(height, dtype=np.float64)[:, None]  # (h, 1)
    row_idx, edge_idx = np.nonzero((start[:, 1] <= rows) != (end[:, 1] <= rows))
    a, b = start[edge_idx], end[edge_idx]
    x = a[:, 0] + (row_idx - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    sign = np.where(b[:, 1] > a[:, 1], 1.0, -1.0)
    # Pixel j is covered by clip(j + 0.5 - x, 0, 1): the step lands on floor(x - 0.5) + 1 and + 2.
    t = np.minimum(np.maximum(x - 0.5, -1.0), float(width))
    col = np.floor(t)
    frac = t - col
    stride = width + 3
    flat = (owner[edge_idx] * height + row_idx) * stride + col.astype(np.int64) + 1
    weight = np.concatenate([sign * (1.0 - frac), sign * frac]).astype(np.float32)
    cells = len(polygons) * height * stride
    diff = np.bincount(np.concatenate([flat, flat + 1]), weight, minlength=cells)
    winding = np.cumsum(diff.astype(np.float32).reshape(len(polygons), height, stride), axis=2)
    return np.minimum(np.abs(winding[:, :, :width]), 1.0)


@functools.lru_cache(maxsize=16)
def _stencil(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(dx, dy)`` of the ``(2 radius + 1)^2`` stencil and each one's ``gap``.

    ``gap`` is the offset's distance to the unit square around the stencil's centre: the
    closest a sample rounded to that centre can come to the offset's pixel.
    """
    dy, dx = np.divmod(np.arange((2 * radius + 1) ** 2), 2 * radius + 1)
    dy, dx = dy - radius, dx - radius
    gap = np.hypot(np.maximum(np.abs(dx) - 0.5, 0), np.maximum(np.abs(dy) - 0.5, 0))
    return dx.astype(np.float32), dy.astype(np.float32), gap


def stroke_polylines(
    lines: list[tuple[np.ndarray, float, bool]], origins: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Coverage ``float32[L, h, w]`` of polylines ``(points, width in pixels, closed)``, in one pass.

    Windows as in :func:`fill_polygons`. Each polyline is sampled every half pixel; each sample
    splats an anti-aliased disc of its line's width on a small stencil, and each pixel keeps the
    largest splat: ``clip(width / 2 + 0.5 - distance, 0, 1)`` with the distance to the line.
    """
    height, width = shape
    paths = [np.concatenate([p, p[:1]]) if closed else p for p, _, closed in lines]
    line_of_seg = np.repeat(np.arange(len(lines)), [len(p) - 1 for p in paths])
    points = np.concatenate(paths).astype(np.float32)
    first = np.ones(len(points) - 1, bool)  # segment i runs from point i to i + 1 within a path
    first[np.cumsum([len(p) for p in paths[:-1]], dtype=np.int64) - 1] = False
    origin = points[:-1][first]
    seg = points[1:][first] - origin
    origin -= origins[line_of_seg]
    steps = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(np.int64), 1)
    idx = np.repeat(np.arange(len(seg)), steps)
    t = (np.arange(len(idx)) - np.repeat(np.cumsum(steps) - steps, steps)) / steps[idx]
    samples = origin[idx] + t[:, None].astype(np.float32) * seg[idx]  # (Q, 2)
    line = line_of_seg[idx]
    reach = np.array([w for _, w, _ in lines], np.float32) / 2 + 0.5  # cover = clip(reach - distance)
    radius = math.ceil(reach.max())
    # The window is padded by 2 radius and each splat centred on its sample's pixel, clamped to
    # within one radius of the window: a sample clamped that way is too far to cover any pixel
    # of the window, so the splats need no bounds check and the padding is cut off at the end.
    pad = 2 * radius
    rows, cols = height + 2 * pad, width + 2 * pad
    dx, dy, gap = _stencil(radius)
    keep = gap < reach.max()  # the corners of the stencil are out of reach
    dx, dy = dx[keep], dy[keep]
    centre = np.rint(samples)
    np.clip(centre, -radius, [width - 1 + radius, height - 1 + radius], out=centre)
    offset = centre - samples
    dist = np.sqrt((offset[:, :1] + dx) ** 2 + (offset[:, 1:] + dy) ** 2)  # (Q, K)
    cover = np.clip(reach[line, None] - dist, 0.0, 1.0)
    base = (line * rows + centre[:, 1].astype(np.int64) + pad) * cols + centre[:, 0].astype(np.int64) + pad
    total = np.zeros((len(lines), rows, cols), np.float32)
    flat = base[:, None] + (dy * cols + dx).astype(np.int64)
    np.maximum.at(total.reshape(-1), flat.reshape(-1), cover.reshape(-1))
    return total[:, pad:pad + height, pad:pad + width]
