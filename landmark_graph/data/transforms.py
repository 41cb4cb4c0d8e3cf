r"""Face crops and the paper's training augmentation, in torch (paper §IV-B).

Coordinates are pixels with pixel centres at integers (``x`` right, ``y`` down), the
convention of ``grid_sample(..., align_corners=True)``. A crop is one affine map
:math:`A` from image pixels to crop pixels,

.. math::
    A = F \, T_{c + t} \, R_\theta \, S_s \, T_{-c} \, C,

with :math:`C` the box-to-crop map (box centre to crop centre :math:`c = (S-1)/2`, the longer
box side times ``margin`` to :math:`S` pixels), then a scale :math:`s`, rotation
:math:`\theta` and shift :math:`t` about the crop centre, and optionally the flip
:math:`F: x \mapsto S - 1 - x`. After a flip, landmarks are relabelled with the scheme's mirror
table so that the left eye stays the left eye.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..schemes import LandmarkScheme, get_scheme

__all__ = [
    "Augmentation",
    "LandmarkTransform",
    "augment_matrix",
    "crop_matrix",
    "occlude",
    "to_image_tensor",
    "transform_points",
    "warp_image",
]


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random training augmentation; the defaults are the paper's.

    Attributes:
        rotation: maximum angle in degrees, uniform in ``[-rotation, rotation]``.
        translation: maximum shift per axis as a fraction of the crop (30 px at 256).
        scale: ``(low, high)`` zoom factor range.
        flip: probability of a horizontal flip.
        occlusion: probability of pasting one rectangle of random colour.
        occlusion_area: its area as a fraction of the crop.
        occlusion_aspect: ``(low, high)`` width / height ratio range of the rectangle.
    """

    rotation: float = 40.0
    translation: float = 30 / 256
    scale: tuple[float, float] = (0.9, 1.1)
    flip: float = 0.5
    occlusion: float = 0.5
    occlusion_area: float = 0.2
    occlusion_aspect: tuple[float, float] = (0.4, 2.5)

    def __post_init__(self) -> None:
        for name in ("flip", "occlusion", "occlusion_area"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.rotation < 0 or self.translation < 0:
            raise ValueError(
                f"rotation and translation must be >= 0, got {self.rotation}, {self.translation}"
            )
        for name in ("scale", "occlusion_aspect"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")

    def scaled(self, strength: float) -> Augmentation:
        """These ranges at another strength: 1 keeps them, 0 turns every random change off.

        ``strength`` multiplies the rotation, the shift, the scale range's distance from 1 and the
        occlusion probability (capped at 1); the flip probability is kept for any ``strength > 0``.

        Example:
            >>> a = Augmentation().scaled(0.5)
            >>> a.rotation, a.scale, a.flip, a.occlusion
            (20.0, (0.95, 1.05), 0.5, 0.25)
            >>> Augmentation().scaled(0).flip
            0.0
        """
        number = isinstance(strength, (int, float)) and not isinstance(strength, bool)
        if not (number and math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
        low, high = self.scale
        return dataclasses.replace(
            self,
            rotation=self.rotation * strength,
            translation=self.translation * strength,
            scale=(max(1 - (1 - low) * strength, 1e-3), 1 + (high - 1) * strength),
            flip=self.flip if strength > 0 else 0.0,
            occlusion=min(1.0, self.occlusion * strength),
        )


def _affine(linear: Tensor | list, shift: Tensor | list) -> Tensor:
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2] = torch.as_tensor(linear, dtype=torch.float64)
    out[:2, 2] = torch.as_tensor(shift, dtype=torch.float64)
    return out


def crop_matrix(box: Tensor | np.ndarray, size: int, margin: float = 1.25) -> Tensor:
    """``Tensor[3, 3]`` float64 mapping image pixels to a ``size`` square crop around ``box``.

    Args:
        box: ``(x_min, y_min, x_max, y_max)``.
        size: crop side ``S`` in pixels.
        margin: the crop side over the longer box side.

    Example:
        >>> m = crop_matrix(torch.tensor([10.0, 20.0, 50.0, 40.0]), size=100, margin=2.0)
        >>> transform_points(torch.tensor([[30.0, 30.0], [70.0, 30.0]]), m).tolist()  # box centre, crop edge
        [[49.5, 49.5], [99.5, 49.5]]
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * margin
    if not side > 0:
        raise ValueError(f"box must have a positive size, got {(x0, y0, x1, y1)}")
    scale = size / side
    centre = (size - 1) / 2
    return _affine([[scale, 0], [0, scale]], [centre - scale * (x0 + x1) / 2, centre - scale * (y0 + y1) / 2])


def augment_matrix(
    size: int,
    angle: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> Tensor:
    r"""``Tensor[3, 3]`` float64: :math:`F\,T_{c+t}\,R_\theta\,S_s\,T_{-c}` on a ``size`` crop.

    ``angle`` in degrees, ``shift`` in pixels, ``flip`` mirrors :math:`x \mapsto S - 1 - x`.
    """
    c = (size - 1) / 2
    cos, sin = math.cos(math.radians(angle)) * scale, math.sin(math.radians(angle)) * scale
    linear = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    centre = torch.tensor([c, c], dtype=torch.float64)
    out = _affine(linear, centre + torch.tensor(shift, dtype=torch.float64) - linear @ centre)
    if flip:
        out = _affine([[-1, 0], [0, 1]], [size - 1, 0]) @ out
    return out


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply a ``Tensor[3, 3]`` or ``[2, 3]`` affine map to ``Tensor[..., 2]`` points."""
    matrix = matrix.to(points.dtype)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def to_image_tensor(image: Tensor | np.ndarray) -> Tensor:
    """``Tensor[3, H, W]`` float32 in ``[0, 1]`` from an integer or ``[0, 1]`` float array
    ``(H, W)``, ``(H, W, 3|4)`` or a float ``Tensor[C, H, W]`` (grey repeated to 3 channels)."""
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else image[..., None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        # Integer images span their dtype (uint8: 0-255); float images are taken as [0, 1].
        scale = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
        image = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float() / scale
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be an array (H, W[, C]) or Tensor[C, H, W] with C in (1, 3), got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    return image.float().expand(3, -1, -1) if image.shape[0] == 1 else image.float()


def warp_image(image: Tensor, matrix: Tensor, size: int) -> Tensor:
    """Resample ``Tensor[C, H, W]`` into a ``Tensor[C, S, S]`` crop through the affine ``matrix``.

    Bilinear, zeros outside the image. When the crop shrinks the image more than twice, the image
    is first box-filtered by the integer factor, against aliasing.
    """
    matrix = matrix.to(torch.float64)
    shrink = math.floor(1 / math.sqrt(abs(float(torch.linalg.det(matrix[:2, :2])))))
    if shrink >= 2:
        image = F.avg_pool2d(image[None], shrink, ceil_mode=True)[0]
        # Pooled pixel j averages source pixels j*k .. j*k+k-1: centre at j*k + (k-1)/2.
        matrix = matrix @ _affine([[shrink, 0], [0, shrink]], [(shrink - 1) / 2] * 2)
    h, w = image.shape[-2:]
    steps = torch.arange(size, dtype=torch.float64)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    source = transform_points(torch.stack([u, v], -1), torch.linalg.inv(matrix))
    grid = torch.stack([2 * source[..., 0] / max(w - 1, 1) - 1, 2 * source[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(image[None], grid[None].to(image.dtype), align_corners=True)[0]


def occlude(image: Tensor, box: tuple[int, int, int, int], color: Tensor) -> Tensor:
    """Fill the pixels ``x0 <= x < x1, y0 <= y < y1`` of ``Tensor[C, H, W]`` with ``color`` (in place)."""
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = color[:, None, None].to(image.dtype)
    return image


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


class LandmarkTransform:
    """Crop, resize and (optionally) augment one face: image, landmarks and the map used.

    Args:
        scheme: the landmark scheme (its mirror table relabels flipped landmarks).
        image_size: crop side ``S``.
        augmentation: random ranges, or ``None`` for the deterministic test transform.
        margin: crop side over the longer face-box side.

    Example:
        >>> t = LandmarkTransform("cofw29", image_size=64)
        >>> pts = torch.as_tensor(get_scheme("cofw29").template) * 40 + 100
        >>> out = t(np.zeros((200, 200, 3), np.uint8), pts, torch.tensor([70.0, 70.0, 130.0, 150.0]))
        >>> out["image"].shape, out["landmarks"].shape, out["transform"].shape
        (torch.Size([3, 64, 64]), torch.Size([29, 2]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        scheme: LandmarkScheme | str,
        image_size: int = 256,
        augmentation: Augmentation | None = None,
        margin: float = 1.25,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2:
            raise ValueError(f"image_size must be an int >= 2, got {image_size!r}")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin!r}")
        self.scheme = get_scheme(scheme)
        self.image_size = image_size
        self.augmentation = augmentation
        self.margin = margin

    def _random_matrix(self, generator: torch.Generator | None) -> tuple[Tensor, bool]:
        aug, size = self.augmentation, self.image_size
        flip = _uniform(0, 1, generator) < aug.flip
        return augment_matrix(
            size,
            angle=_uniform(-aug.rotation, aug.rotation, generator),
            scale=_uniform(*aug.scale, generator),
            shift=(_uniform(-1, 1, generator) * aug.translation * size,
                   _uniform(-1, 1, generator) * aug.translation * size),
            flip=flip,
        ), flip

    def _occlusion_box(self, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        aug, size = self.augmentation, self.image_size
        aspect = _uniform(*aug.occlusion_aspect, generator)
        area = aug.occlusion_area * size * size
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        cx, cy = _uniform(0, size, generator), _uniform(0, size, generator)
        return (max(0, round(cx - w / 2)), max(0, round(cy - h / 2)),
                min(size, round(cx + w / 2)), min(size, round(cy + h / 2)))

    def __call__(
        self,
        image: Tensor | np.ndarray,
        landmarks: Tensor | np.ndarray,
        box: Tensor | np.ndarray,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Returns a dict: ``"image"`` ``Tensor[3, S, S]`` float32 in ``[0, 1]``, ``"landmarks"``
        ``Tensor[N, 2]`` float32 crop pixels, ``"transform"`` ``Tensor[2, 3]`` (image pixels to crop
        pixels, flip included), ``"flipped"`` bool scalar and ``"order"`` ``LongTensor[N]``: output
        point ``i`` is input point ``order[i]`` (the mirror table after a flip).
        """
        landmarks = torch.as_tensor(landmarks, dtype=torch.float64)
        n = self.scheme.num_points
        if landmarks.shape != (n, 2):
            raise ValueError(f"landmarks must have shape ({n}, 2) for scheme {self.scheme.name!r}, "
                             f"got {tuple(landmarks.shape)}")
        matrix = crop_matrix(box, self.image_size, self.margin)
        flipped = False
        if self.augmentation is not None:
            extra, flipped = self._random_matrix(generator)
            matrix = extra @ matrix
        crop = warp_image(to_image_tensor(image), matrix, self.image_size)
        if self.augmentation is not None and _uniform(0, 1, generator) < self.augmentation.occlusion:
            occlude(crop, self._occlusion_box(generator), torch.rand(3, generator=generator))
        order = torch.tensor(self.scheme.mirror) if flipped else torch.arange(n)
        return {
            "image": crop,
            "landmarks": transform_points(landmarks, matrix)[order].float(),
            "transform": matrix[:2].float(),
            "flipped": torch.tensor(flipped),
            "order": order,
        }
