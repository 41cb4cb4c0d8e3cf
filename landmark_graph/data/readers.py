"""Readers for the annotation files of WFLW, 300W and COFW.

Every reader returns a list of :class:`FaceRecord`, one per face, with landmarks in the pixel
coordinates of the file (x right, y down) and nothing dropped: a malformed line, a bad number
or a missing image raises :class:`AnnotationError` naming the file and the line (for ``.mat``
files, the face).

Coordinates are kept as stored by default. 300W ``.pts`` files and COFW come from MATLAB tools
whose pixel centres sit at 1, 1; WFLW lists and menpo's ``.ljson`` files use 0-based pixels.
``one_based=True`` (:func:`read_pts`, :func:`read_300w`, :func:`read_cofw`) subtracts 1 from the
former where the half-pixel matters.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schemes import WFLW_ATTRIBUTES

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnnotationError",
    "FaceRecord",
    "load_image",
    "read_300w",
    "read_cofw",
    "read_ljson",
    "read_pts",
    "read_wflw",
]

#: Image suffixes looked up first beside a ``.pts`` or ``.ljson`` file, in this order (any case);
#: with Pillow installed, every other format it opens follows. Without Pillow, these only.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".gif",
)
_WFLW_POINTS = 98


class AnnotationError(ValueError):
    """Malformed annotation: ``str(err)`` reads ``path:line: problem``; ``.path``, ``.line`` and
    ``.problem`` hold the three parts (``.line`` is ``None`` where a line does not apply)."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass
class FaceRecord:
    """One annotated face.

    Attributes:
        landmarks: ``ndarray[N, 2]`` float64, image pixels.
        image_path: where the image is, or ``None`` when ``image`` holds it (COFW).
        image: ``ndarray[H, W]`` or ``[H, W, 3]`` uint8 held in memory, else ``None``.
        bbox: ``ndarray[4]`` face box ``(x_min, y_min, x_max, y_max)``, or ``None`` (300W has
            none; the landmark extent is used).
        occluded: ``ndarray[N]`` bool occlusion flags when annotated (COFW), else ``None``.
        attributes: ``ndarray[6]`` bool WFLW flags (:data:`~landmark_graph.schemes.WFLW_ATTRIBUTES`
            order), else ``None``.
        source: ``"file:line"`` the record came from, for messages.

    The constructor stores ``landmarks`` and ``bbox`` as float64 arrays and checks the record
    (:meth:`validate`), so a bad record fails where it is built, with a message naming it.

    Example:
        >>> FaceRecord(np.array([[10.0, 20.0], [float("nan"), 5.0]]), image_path="a.jpg")
        Traceback (most recent call last):
        ...
        landmark_graph.data.readers.AnnotationError: a.jpg: landmark 1 is (nan, 5.0), not finite
    """

    landmarks: np.ndarray
    image_path: Path | None = None
    image: np.ndarray | None = None
    bbox: np.ndarray | None = None
    occluded: np.ndarray | None = None
    attributes: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        try:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
            if self.bbox is not None:
                self.bbox = np.asarray(self.bbox, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise AnnotationError(self._name(), None, f"landmarks and bbox must be arrays of numbers ({err})"
                                  ) from None
        if self.image_path is not None:
            self.image_path = Path(self.image_path)
        self.validate()

    def _name(self) -> str:
        return self.source or (str(self.image_path) if self.image_path is not None else "FaceRecord")

    def validate(self, image_size: tuple[int, int] | None = None) -> FaceRecord:
        r"""Check the record; return it, or raise :class:`AnnotationError` naming it (its ``source``,
        else its image path).

        Checks: ``landmarks`` of shape ``(N, 2)``, ``N >= 1``, finite; ``bbox`` four finite
        numbers with ``x_max > x_min`` and ``y_max > y_min``; ``occluded`` of shape ``(N,)``;
        ``attributes`` of shape ``(6,)``; ``image`` ``(H, W)`` or ``(H, W, C)``, not empty.

        With the image's size ``(H, W)`` (``image_size``, else the shape of ``image`` when it is
        held in memory), every landmark and box corner must also lie within one image size of
        the image: :math:`-W \le x \le 2W` and :math:`-H \le y \le 2H`. Points a little
        outside are common on real data (300W chins, the contours of turned faces in WFLW,
        boxes cut by the border) and are kept; a point further out than that is a broken
        annotation (a wrong scale or unit, swapped columns).
        """
        problem = _record_problem(self, image_size)
        if problem is not None:
            raise AnnotationError(self._name(), None, problem)
        return self

    def box(self) -> np.ndarray:
        """``ndarray[4]`` ``(x_min, y_min, x_max, y_max)``: the face box, or the landmark extent."""
        if self.bbox is not None:
            return self.bbox
        return np.concatenate([self.landmarks.min(0), self.landmarks.max(0)])


def _point_problem(
    points: np.ndarray, image_size: tuple[int, int] | None, what: str = "landmark"
) -> tuple[int, str] | None:
    """``(i, problem)`` for the first point of ``ndarray[N, 2]`` that is not finite or lies more
    than one image size outside an image of ``image_size = (H, W)``; ``None`` when all are fine."""
    finite = np.isfinite(points).all(1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        return i, f"{what} {i} is ({points[i, 0]}, {points[i, 1]}), not finite"
    if image_size is None:
        return None
    height, width = image_size
    limit = np.array([width, height], np.float64)
    outside = ((points < -limit) | (points > 2 * limit)).any(1)
    if not outside.any():
        return None
    i = int(np.flatnonzero(outside)[0])
    return i, (f"{what} {i} at ({points[i, 0]:g}, {points[i, 1]:g}) lies more than one image size "
               f"outside the {width}x{height} image")


def _record_problem(record: FaceRecord, image_size: tuple[int, int] | None) -> str | None:
    """The first thing wrong with a record, or ``None``."""
    points = record.landmarks
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        return f"landmarks must have shape (N, 2) with N >= 1, got {points.shape}"
    if record.image is not None:
        shape = np.shape(record.image)
        if len(shape) not in (2, 3) or 0 in shape:
            return f"image must be (H, W) or (H, W, C), not empty, got shape {shape}"
        image_size = image_size or shape[:2]
    problem = _point_problem(points, image_size)
    if problem is not None:
        return problem[1]
    if record.bbox is not None:
        box = record.bbox
        if box.shape != (4,) or not np.isfinite(box).all() or not (box[2] > box[0] and box[3] > box[1]):
            return f"bbox must be 4 finite numbers with x_max > x_min and y_max > y_min, got {box.tolist()}"
        corner = _point_problem(box.reshape(2, 2), image_size, "bbox corner")
        if corner is not None:
            return corner[1]
    for name, expected in (("occluded", (len(points),)), ("attributes", (len(WFLW_ATTRIBUTES),))):
        value = getattr(record, name)
        if value is not None and np.shape(value) != expected:
            return f"{name} must have shape {expected}, got {np.shape(value)}"
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from the image file's header (Pillow reads no pixels for it), or ``None``
    without Pillow or when it cannot tell (:func:`load_image` then reports the file)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError):
        return None


def _record(path: Path, line: int | None, image_size: tuple[int, int] | None, **fields) -> FaceRecord:
    """A record read from ``path`` (at ``line``), checked against its image's size; a problem is
    reported at ``path:line``."""
    source = str(path) if line is None else f"{path}:{line}"
    try:
        return FaceRecord(**fields, source=source).validate(image_size)
    except AnnotationError as err:
        raise AnnotationError(path, line, err.problem) from None


def _numbers(path: Path, line: int, fields: list[str], what: str) -> np.ndarray:
    values = []
    for column, text in enumerate(fields, 1):
        try:
            value = float(text)
        except ValueError:
            raise AnnotationError(path, line, f"{what}: field {column} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise AnnotationError(path, line, f"{what}: field {column} is {text!r}, not a finite number")
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def _existing_image(path: Path, line: int | None, image: Path) -> Path:
    if not image.is_file():
        raise AnnotationError(path, line, f"image {str(image)!r} does not exist")
    return image


def read_wflw(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a WFLW list (``list_98pt_rect_attr_{train,test}.txt`` or a per-attribute subset).

    Each line: 196 coordinates ``x0 y0 ... x97 y97``, the box ``x_min y_min x_max y_max``, six
    0/1 attribute flags (pose, expression, illumination, make-up, occlusion, blur) and the image
    path relative to ``image_root`` (default: the list's folder). Blank lines are allowed.

    Args:
        annotation_file: the list.
        image_root: the ``WFLW_images`` folder.
        check_images: raise when an image file is missing.

    Raises:
        AnnotationError: wrong field count, a bad number or flag, an empty box, a missing image,
            a landmark or box corner far outside the image (:meth:`FaceRecord.validate`; checked
            with ``check_images`` and Pillow installed, which reads each image's size).
    """
    path = Path(annotation_file)
    root = path.parent if image_root is None else Path(image_root)
    expected = 2 * _WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, 1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != expected:
                raise AnnotationError(path, line_no, f"expected {expected} fields (196 coordinates, 4 box "
                                      f"values, 6 attribute flags, image path), got {len(fields)}")
            values = _numbers(path, line_no, fields[:-1], "WFLW annotation")
            flags = values[-len(WFLW_ATTRIBUTES):]
            if not np.isin(flags, (0, 1)).all():
                raise AnnotationError(path, line_no, f"attribute flags must be 0 or 1, got {flags.tolist()}")
            bbox = values[2 * _WFLW_POINTS : 2 * _WFLW_POINTS + 4]
            if not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
                raise AnnotationError(path, line_no, f"box needs x_max > x_min and y_max > y_min, got {bbox}")
            image = root / fields[-1]
            size = _image_size(_existing_image(path, line_no, image)) if check_images else None
            records.append(_record(
                path, line_no, size, landmarks=values[: 2 * _WFLW_POINTS].reshape(_WFLW_POINTS, 2),
                image_path=image, bbox=bbox, attributes=flags.astype(bool),
            ))
    return records


def read_pts(path: str | os.PathLike, *, one_based: bool = False) -> np.ndarray:
    """Read one iBUG ``.pts`` file: ``ndarray[n_points, 2]`` ``(x, y)``.

    Format: ``version: 1``, ``n_points: N``, ``{``, ``N`` lines ``x y``, ``}``.

    Args:
        path: the file.
        one_based: the file counts pixels from 1 (MATLAB, the usual reading of 300W, and what
            menpo assumes): subtract 1, so that the first pixel's centre is at 0. Default: the
            coordinates as stored.

    Raises:
        AnnotationError: missing header or braces, a wrong number of points, a bad number.
    """
    return _parse_pts(Path(path), one_based)[0]


def _parse_pts(path: Path, one_based: bool) -> tuple[np.ndarray, list[int]]:
    """The points of a ``.pts`` file and the line each one is on."""
    with open(path, encoding="utf-8") as handle:
        lines = [(i, text.strip()) for i, text in enumerate(handle, 1) if text.strip()]
    header = {}
    body = iter(lines)
    for line_no, text in body:
        if text == "{":
            break
        key, sep, value = text.partition(":")
        if not sep:
            raise AnnotationError(path, line_no, f"expected a 'key: value' header line or '{{', got {text!r}")
        header[key.strip()] = value.strip()
    else:
        raise AnnotationError(path, None, "no '{' opening the point list")
    if "n_points" not in header or not header["n_points"].isdigit():
        raise AnnotationError(path, 2, f"header needs 'n_points: <int>', got {header}")
    count = int(header["n_points"])
    points, point_lines = [], []
    for line_no, text in body:
        if text == "}":
            break
        fields = text.split()
        if len(fields) != 2:
            raise AnnotationError(path, line_no, f"expected 'x y', got {text!r}")
        points.append(_numbers(path, line_no, fields, "point"))
        point_lines.append(line_no)
    else:
        raise AnnotationError(path, None, "no '}' closing the point list")
    if len(points) != count:
        raise AnnotationError(path, line_no, f"n_points says {count} but the list holds {len(points)}")
    points = np.stack(points) if points else np.zeros((0, 2))
    return (points - 1.0 if one_based else points), point_lines


def read_ljson(path: str | os.PathLike, group: str | None = None) -> np.ndarray:
    """Read one menpo ``.ljson`` landmark file: ``ndarray[n_points, 2]`` ``(x, y)``.

    menpo writes image points as ``[y, x]`` (its first axis is the image's rows), 0-based with
    pixel centres at integers, the convention of this library: the axes are swapped and the
    values kept. (menpo subtracts 1 from ``.pts`` files on import, so an ``.ljson`` it exported
    from one reads 1 lower than the ``.pts``, as with ``read_pts(one_based=True)``.) The three
    layouts of menpo's versions are recognised by their keys:

    - version 1: ``{"groups": [{"label": ..., "landmarks": [{"point": [y, x]}, ...]}, ...]}``,
      the groups (labels of one shape) concatenated in order;
    - version 2: ``{"landmarks": {"points": [[y, x], ...]}, "labels": [...]}``;
    - version 3: ``{"groups": {name: {"landmarks": {"points": [[y, x], ...]}, ...}, ...}}``,
      one shape per group: ``group`` names it, needed when the file holds several.

    Args:
        path: the file.
        group: the group of a version 3 file.

    Raises:
        AnnotationError: not JSON, none of the layouts, a missing group, a point that is
            ``null`` (menpo's missing point), not a number or not 2-D.

    Example:
        >>> import json, os, tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".ljson", delete=False) as f:
        ...     json.dump({"version": 2, "labels": [], "landmarks": {"points": [[20, 10], [40, 30]]}}, f)
        >>> read_ljson(f.name).tolist()
        [[10.0, 20.0], [30.0, 40.0]]
        >>> os.remove(f.name)
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise AnnotationError(path, err.lineno, f"not valid JSON ({err.msg})") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if isinstance(groups, list):  # version 1
        try:
            points = [p["point"] for g in groups for p in g["landmarks"]]
        except (KeyError, TypeError):
            raise AnnotationError(path, None, "expected menpo's version 1 layout: each of 'groups' holds "
                                  "'landmarks': [{'point': [y, x]}, ...]") from None
    else:
        if isinstance(groups, dict):  # version 3
            if group is None and len(groups) != 1:
                raise AnnotationError(path, None, f"holds the groups {sorted(groups)}; pass group=")
            name = next(iter(groups)) if group is None else group
            if name not in groups:
                raise AnnotationError(path, None, f"has no group {name!r}; it holds {sorted(groups)}")
            data = groups[name]
        landmarks = data.get("landmarks") if isinstance(data, dict) else None
        points = landmarks.get("points") if isinstance(landmarks, dict) else None
        if not isinstance(points, list):
            raise AnnotationError(path, None, "expected menpo's layout: 'landmarks': {'points': [[y, x], "
                                  "...]} (version 2), or 'groups' (versions 1 and 3)")
    for i, point in enumerate(points):
        if point is None or (isinstance(point, list) and None in point):
            raise AnnotationError(path, None, f"point {i} is null (missing); this reader needs every point")
        if not (isinstance(point, list) and len(point) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
            raise AnnotationError(path, None, f"point {i} must be [y, x], two finite numbers, got {point!r}")
    yx = np.array(points, dtype=np.float64).reshape(-1, 2)
    return yx[:, ::-1].copy()


_LANDMARK_SUFFIXES = (".pts", ".ljson")


def _image_extensions() -> tuple[str, ...]:
    """:data:`IMAGE_EXTENSIONS`, then every other suffix Pillow opens (stubs that need an
    external decoder left out); the former alone without Pillow. Asked anew on each read, so
    that plugins registered since (e.g. a HEIF opener) count."""
    try:
        from PIL import Image, ImageFile
    except ImportError:
        return IMAGE_EXTENSIONS
    opens = {}
    for suffix, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        if factory is not None and not stub:
            opens[suffix.lower()] = fmt
    return IMAGE_EXTENSIONS + tuple(sorted(set(opens) - set(IMAGE_EXTENSIONS)))


def _images_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    """The image files of a folder: stem -> {lower-case suffix: path}, one listing per folder."""
    known = set(extensions)
    found: dict[str, dict[str, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and stem and f".{suffix.lower()}" in known and entry.is_file():
                found.setdefault(stem, {})[f".{suffix.lower()}"] = folder / entry.name
    return found


def _image_beside(annotation: Path, listing: dict[str, dict[str, Path]], extensions: tuple[str, ...]) -> Path:
    candidates = listing.get(annotation.stem, {})
    for suffix in extensions:
        if suffix in candidates:
            return candidates[suffix]
    common = ",".join(IMAGE_EXTENSIONS)
    raise AnnotationError(annotation, None, f"no image beside it (looked for {annotation.stem} with the "
                          f"suffix {{{common}}} or any other image format Pillow opens, in any case)")


def read_300w(
    source: str | os.PathLike | Iterable[str | os.PathLike], num_points: int = 68, *, one_based: bool = False
) -> list[FaceRecord]:
    """Read 300W-style landmark files, each with its image beside it (same name).

    Landmark files are iBUG ``.pts`` (:func:`read_pts`) or menpo ``.ljson`` (:func:`read_ljson`);
    the image is any file of the same stem in a format Pillow opens (``.jpg``, ``.png``,
    ``.ppm``, ``.tif``, ``.webp``, ..., any case; :data:`IMAGE_EXTENSIONS` first). No box: the
    landmark extent is used. With Pillow installed, each image's size is read from its header
    to reject landmarks far outside it (:meth:`FaceRecord.validate`).

    Args:
        source: a folder (searched recursively for ``.pts`` and ``.ljson`` files, sorted), one
            file, or an iterable of them (``.ljson`` files by their suffix, any other as ``.pts``).
        num_points: points each file must hold.
        one_based: the ``.pts`` files count pixels from 1 (see :func:`read_pts`): subtract 1.
            ``.ljson`` files are 0-based by menpo's convention and read as stored.

    Raises:
        AnnotationError: a malformed file, another point count, no image beside a file, a
            ``.pts`` and an ``.ljson`` file for the same image, a landmark far outside its image.
        FileNotFoundError: a folder without landmark files.
    """
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"{str(source)!r} does not exist")
        files = [source]
        if source.is_dir():
            files = sorted(f for suffix in _LANDMARK_SUFFIXES for f in source.rglob(f"*{suffix}"))
        if not files:
            raise FileNotFoundError(f"no .pts or .ljson files under {str(source)!r}")
    else:
        files = [Path(p) for p in source]
    seen: dict[Path, Path] = {}
    listings: dict[Path, dict[str, dict[str, Path]]] = {}
    extensions = _image_extensions()
    records = []
    for file in files:
        twin = seen.setdefault(file.with_suffix(""), file)
        if twin != file:
            raise AnnotationError(file, None, f"{twin.name} annotates the same image; keep one of the two "
                                  "(or pass the files to read)")
        if file.suffix.lower() == ".ljson":
            landmarks, lines, count_line = read_ljson(file), None, None
        else:
            (landmarks, lines), count_line = _parse_pts(file, one_based), 2
        if len(landmarks) != num_points:
            raise AnnotationError(file, count_line, f"expected {num_points} points, got {len(landmarks)}")
        if file.parent not in listings:
            listings[file.parent] = _images_by_stem(file.parent, extensions)
        image = _image_beside(file, listings[file.parent], extensions)
        size = _image_size(image)
        bad = _point_problem(landmarks, size)
        if bad is not None:
            raise AnnotationError(file, lines[bad[0]] if lines else None, f"{bad[1]} {image.name}")
        records.append(_record(file, None, size, landmarks=landmarks, image_path=image))
    return records


# Variable names of the released COFW files: (images, shapes, boxes) per split.
_COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}
_COFW_POINTS = 29


def _load_mat(path: Path, names: set[str]) -> dict:
    """Variables of a MATLAB file: scipy for v4-v7.2, h5py (when installed) for v7.3."""
    import scipy.io

    if _is_hdf5(path):
        return _load_mat_v73(path, names)
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 (HDF5) files
        return _load_mat_v73(path, names)
    except ValueError as err:
        raise AnnotationError(path, None, f"not a readable MATLAB file ({err})") from err
    out = {}
    for key in names & set(data):
        value = data[key]
        # Cell arrays load as object arrays; images then sit one per cell.
        out[key] = [np.asarray(v) for v in value.ravel()] if value.dtype == object else value
    return out


def _is_hdf5(path: Path) -> bool:
    """HDF5 puts its signature at byte 0, 512, 1024, ...; MATLAB v7.3 files use offset 512."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return any(head[offset : offset + 8] == b"\x89HDF\r\n\x1a\n" for offset in range(0, len(head), 512))


def _load_mat_v73(path: Path, names: set[str]) -> dict:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py: "
                          "pip install h5py (or landmark-graph[data])") from err
    out = {}
    with h5py.File(path, "r") as handle:
        for key in names & set(handle):
            value = handle[key]
            if value.dtype == h5py.ref_dtype:
                # HDF5 stores MATLAB arrays transposed: (W, H) or (3, W, H) for an H x W image.
                out[key] = [np.asarray(handle[ref]).T for ref in np.asarray(value).ravel()]
            else:
                out[key] = np.asarray(value).T
    return out


def read_cofw(
    path: str | os.PathLike, split: str | None = None, *, one_based: bool = False
) -> list[FaceRecord]:
    """Read a COFW ``.mat`` file (``COFW_train_color.mat``, ``COFW_test_color.mat``, ...).

    The file holds images (cell array), shapes ``(M, 87)`` (29 x, 29 y, 29 occlusion flags) and
    boxes ``(M, 4)`` as ``x, y, width, height``, named ``IsTr, phisTr, bboxesTr`` (train) or
    ``IsT, phisT, bboxesT`` (test). Images stay in memory in the records.

    Args:
        path: the ``.mat`` file (MATLAB v5 through scipy, v7.3 through h5py when installed).
        split: ``"train"`` or ``"test"``; ``None`` takes whichever the file holds.
        one_based: the coordinates count pixels from 1 (MATLAB): subtract 1 from the landmarks
            and the box corner. Default: as stored.

    Raises:
        AnnotationError: missing variables, wrong sizes, bad values, a landmark far outside its
            image (:meth:`FaceRecord.validate`); the "line" is the face (1-based).
        ImportError: a v7.3 file without h5py.
    """
    path = Path(path)
    if split is not None and split not in _COFW_KEYS:
        raise ValueError(f"split must be one of {sorted(_COFW_KEYS)} or None, got {split!r}")
    splits = [split] if split else list(_COFW_KEYS)
    data = _load_mat(path, {key for s in splits for key in _COFW_KEYS[s]})
    found = [s for s in splits if set(_COFW_KEYS[s]) <= set(data)]
    if not found:
        wanted = " or ".join(str(_COFW_KEYS[s]) for s in splits)
        raise AnnotationError(path, None, f"expected the variables {wanted}, found {sorted(data)}")
    images, shapes, boxes = (data[key] for key in _COFW_KEYS[found[0]])
    shapes = np.atleast_2d(np.asarray(shapes, np.float64))
    boxes = np.atleast_2d(np.asarray(boxes, np.float64))
    if shapes.shape[1] != 3 * _COFW_POINTS or boxes.shape[1] != 4:
        raise AnnotationError(path, None, f"shapes must be (M, 87) and boxes (M, 4), got {shapes.shape} "
                              f"and {boxes.shape}")
    if not len(images) == len(shapes) == len(boxes):
        counts = f"{len(images)} images, {len(shapes)} shapes and {len(boxes)} boxes"
        raise AnnotationError(path, None, f"{counts} must match")
    records = []
    for face, (image, shape, box) in enumerate(zip(images, shapes, boxes, strict=True), 1):
        if not (np.isfinite(shape).all() and np.isfinite(box).all()):
            raise AnnotationError(path, face, "shape or box holds NaN or inf")
        flags = shape[2 * _COFW_POINTS:]
        if not np.isin(flags, (0, 1)).all():
            raise AnnotationError(path, face, f"occlusion flags must be 0 or 1, got {np.unique(flags)}")
        if not (box[2] > 0 and box[3] > 0):
            raise AnnotationError(path, face, f"box width and height must be > 0, got {box.tolist()}")
        if image.ndim not in (2, 3) or image.size == 0:
            raise AnnotationError(path, face, f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
        shift = 1.0 if one_based else 0.0
        landmarks = np.stack([shape[:_COFW_POINTS], shape[_COFW_POINTS : 2 * _COFW_POINTS]], axis=1)
        records.append(_record(
            path, face, None, landmarks=landmarks - shift, image=image, occluded=flags.astype(bool),
            bbox=np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]]) - shift,
        ))
    return records


def load_image(path: str | os.PathLike, *, exif_orientation: bool = False) -> np.ndarray:
    """Read an image file as ``ndarray[H, W, 3]`` uint8 RGB (needs Pillow, installed with matplotlib).

    ``exif_orientation=True`` turns the pixels upright as the file's EXIF orientation tag says
    (phone photos): what ``predict`` does. Data-set readers keep the stored pixels, the frame their
    annotations are in.

    Any format Pillow opens. Deeper images are scaled to 8 bits, not clipped: 16-bit grayscale
    (PNG, TIFF, PGM; Pillow's modes ``I;16*`` and ``I``) by 255/65535, 32-bit float grayscale
    (TIFF, mode ``F``) read as intensities in ``[0, 1]``; Pillow itself reduces 16-bit colour
    PNG, TIFF and PPM files to 8 bits per channel.

    Raises:
        AnnotationError: the file is not a readable image; a float image with values outside
            ``[0, 1]`` or NaN, or an integer image outside ``0..65535`` (whose scale is unknown).
    """
    try:
        from PIL import Image, ImageOps
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install pillow") from err
    try:
        with Image.open(path) as image:
            if exif_orientation:
                image = ImageOps.exif_transpose(image)
            if image.mode not in ("F", "I") and not image.mode.startswith("I;16"):
                return np.array(image.convert("RGB"))
            values, mode = np.asarray(image, dtype=np.float64), image.mode
    except (OSError, ValueError) as err:
        raise AnnotationError(path, None, f"cannot read the image ({err})") from err
    # 'I' holds 16-bit PNG and PGM files (and 32-bit integer TIFFs, out of range below).
    top = 1.0 if mode == "F" else 65535.0
    if not (values.size and np.isfinite(values).all() and values.min() >= 0 and values.max() <= top):
        found = f"[{values.min()}, {values.max()}]" if values.size else "no pixels"
        raise AnnotationError(path, None, f"{mode!r} image with values in {found}: only 0..{top:g} has a "
                              "known scale to 8 bits; convert the file")
    gray = np.rint(values * (255.0 / top)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
