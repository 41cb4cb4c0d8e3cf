"""Pictures of landmarks: points joined along the scheme's parts, face boxes, ground truth.

Needs matplotlib (``pip install 'landmark-graph[viz]'``), imported when a function runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from ..schemes import LandmarkScheme, get_scheme

__all__ = ["draw_landmarks", "pyplot", "save_face_drawing"]


def pyplot(required: bool = True):
    """matplotlib's ``pyplot`` on the file backend ``Agg``.

    Where matplotlib is missing: an ``ImportError`` naming the extra, or, with ``required=False``,
    ``None`` and a line on stderr saying the pictures are skipped.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        if required:
            raise ImportError("drawing needs matplotlib: pip install 'landmark-graph[viz]'") from error
        print("matplotlib is not installed: skipping the PNGs (pip install 'landmark-graph[viz]')",
              file=sys.stderr)
        return None
    return plt


def draw_landmarks(ax, points: np.ndarray, scheme: LandmarkScheme | str | None, color: str,
                   label: str | None = None, size: float = 8.0) -> None:
    """Draw ``ndarray[N, 2]`` points on a matplotlib ``ax``, joined along the scheme's parts (its
    closed parts as loops); points only when ``scheme`` is ``None`` or has another count."""
    points = np.asarray(points, dtype=np.float64)
    scheme = get_scheme(scheme) if scheme is not None else None
    if scheme is not None and scheme.num_points == len(points):
        for part, indices in scheme.parts.items():
            line = points[list(indices) + ([indices[0]] if part in scheme.closed else [])]
            ax.plot(line[:, 0], line[:, 1], "-", color=color, linewidth=1.0, alpha=0.8)
    ax.scatter(points[:, 0], points[:, 1], s=size, c=color, label=label, zorder=3, linewidths=0)


def save_face_drawing(
    path: str | os.PathLike,
    image: np.ndarray,
    faces: Sequence,
    scheme: LandmarkScheme | str,
    truth: np.ndarray | None = None,
    *,
    width: float = 6.0,
) -> None:
    """Save ``image`` with each :class:`~landmark_graph.engine.inference.Face`'s box (and score) and
    landmarks (green; red crosses on those whose visibility is under 0.5), and the ground truth
    ``ndarray[N, 2]`` (white) when given, as a PNG."""
    plt = pyplot()
    height, width_px = image.shape[:2]
    fig, ax = plt.subplots(figsize=(width, width * height / width_px))
    ax.imshow(image)
    if truth is not None:
        draw_landmarks(ax, truth, scheme, "white", label="truth")
    for face in faces:
        if face.box is not None:
            x0, y0, x1, y1 = face.box
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", linewidth=1.2))
            if face.score is not None:
                ax.text(x0, y0, f"{face.score:.2f}", color="yellow", fontsize=8, va="bottom")
        draw_landmarks(ax, face.landmarks, scheme, "lime", size=6.0)
        if getattr(face, "visibility", None) is not None and (face.visibility < 0.5).any():
            hidden = face.landmarks[face.visibility < 0.5]
            ax.scatter(hidden[:, 0], hidden[:, 1], s=18, c="red", marker="x", linewidths=1.0, zorder=4,
                       label="judged occluded")
    ax.set_xlim(-0.5, width_px - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, dpi=min(200, max(100, round(width_px / width))))
    plt.close(fig)
