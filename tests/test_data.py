import importlib.util
import json
import sys

import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader

from landmark_graph.data import (
    AnnotationError,
    Augmentation,
    FaceRecord,
    LandmarkDataset,
    LandmarkTransform,
    PoseBalancedSampler,
    crop_matrix,
    load_image,
    pose_bins,
    procrustes_align,
    read_300w,
    read_cofw,
    read_ljson,
    read_pts,
    read_wflw,
    transform_points,
    warp_image,
)
from landmark_graph.schemes import get_scheme

PIL = pytest.importorskip("PIL.Image", reason="Pillow writes the fixture images")
PIL_features = pytest.importorskip("PIL.features")
HAS_H5PY = importlib.util.find_spec("h5py") is not None


def _face(name: str, rng: np.random.Generator, size: float = 60.0, centre=(100.0, 90.0)) -> np.ndarray:
    pts = get_scheme(name).template * size + np.asarray(centre)
    return pts + rng.normal(0, 1.0, pts.shape)


def _write_image(path, shape=(180, 200, 3), value=128) -> None:
    PIL.fromarray(np.full(shape, value, np.uint8)).save(path)


def _wflw_line(pts: np.ndarray, box, flags, image: str) -> str:
    numbers = [*(f"{v:.3f}" for v in pts.ravel()), *(str(v) for v in box), *(str(f) for f in flags)]
    return " ".join([*numbers, image])


@pytest.fixture
def wflw(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    lines, faces = [], []
    for i in range(3):
        pts = _face("wflw98", rng)
        faces.append(pts)
        _write_image(tmp_path / "imgs" / "a" / f"{i}.png")
        lines.append(_wflw_line(pts, [40, 30, 160, 160], [i % 2, 0, 0, 1, 0, int(i == 2)], f"a/{i}.png"))
    lines.insert(1, "")  # blank lines are allowed
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, tmp_path / "imgs", faces


def test_read_wflw(wflw):
    path, root, faces = wflw
    records = read_wflw(path, root)
    assert len(records) == 3
    np.testing.assert_allclose(records[2].landmarks, faces[2], atol=1e-3)
    assert records[0].bbox.tolist() == [40, 30, 160, 160]
    assert records[2].attributes.tolist() == [False, False, False, True, False, True]
    assert records[1].image_path == root / "a" / "1.png" and records[2].source.endswith("list.txt:4")


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (lambda f: f[:-5] + f[-1:], 1, "expected 207 fields"),
        (lambda f: ["1.0x", *f[1:]], 1, r"field 1 '1\.0x' is not a number"),
        (lambda f: [*f[:5], "nan", *f[6:]], 1, "not a finite number"),
        (lambda f: [*f[:-2], "2", f[-1]], 1, "0 or 1"),
        (lambda f: [*f[:-1], "a/missing.png"], 1, "does not exist"),
        (lambda f: [*f[:196], "50", "30", "40", "160", *f[200:]], 1, "x_max > x_min"),
    ],
)
def test_read_wflw_names_file_and_line_of_bad_input(wflw, edit, line, message):
    path, root, _ = wflw
    lines = path.read_text().splitlines()
    lines[line - 1] = " ".join(edit(lines[line - 1].split()))
    path.write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=message) as err:
        read_wflw(path, root)
    assert (err.value.path, err.value.line) == (str(path), line)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_read_wflw_can_skip_the_image_check(wflw):
    path, _, _ = wflw
    records = read_wflw(path, path.parent / "elsewhere", check_images=False)
    assert len(records) == 3 and not records[0].image_path.exists()


def _write_pts(path, pts, count=None, braces=True):
    body = [f"{x:.3f} {y:.3f}" for x, y in pts]
    head = ["version: 1", f"n_points: {len(pts) if count is None else count}"]
    path.write_text("\n".join(head + (["{", *body, "}"] if braces else body)) + "\n")


def test_read_300w_folder_with_images_beside(tmp_path):
    rng = np.random.default_rng(1)
    faces = []
    for folder, stem in [("helen", "b"), ("lfpw/x", "a")]:
        (tmp_path / folder).mkdir(parents=True)
        faces.append(_face("300w68", rng))
        _write_pts(tmp_path / folder / f"{stem}.pts", faces[-1])
        _write_image(tmp_path / folder / f"{stem}.jpg")
    records = read_300w(tmp_path)
    assert [r.image_path.name for r in records] == ["b.jpg", "a.jpg"]  # sorted by path
    np.testing.assert_allclose(records[1].landmarks, faces[1], atol=1e-3)
    assert records[0].bbox is None
    np.testing.assert_allclose(records[0].box(), [*faces[0].min(0), *faces[0].max(0)], atol=1e-3)
    assert len(read_300w([tmp_path / "helen" / "b.pts"])) == 1


@pytest.mark.parametrize(
    ("write", "message", "line"),
    [
        (lambda p, pts: _write_pts(p, pts, count=67), "n_points says 67 but the list holds 68", 72),
        (lambda p, pts: _write_pts(p, pts, braces=False), "expected a 'key: value' header line", 3),
        (lambda p, pts: _write_pts(p, np.vstack([pts[:5], [[np.nan, 1.0]], pts[6:]])), "not a finite", 9),
        (lambda p, pts: p.write_text("version: 1\nn_points: 1\n{\n1 2 3\n}\n"), "expected 'x y'", 4),
        (lambda p, pts: p.write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n"), "no '}'", None),
    ],
)
def test_read_pts_errors(tmp_path, write, message, line):
    path = tmp_path / "face.pts"
    write(path, _face("300w68", np.random.default_rng(2)))
    with pytest.raises(AnnotationError, match=message) as err:
        read_pts(path)
    assert err.value.line == line and err.value.path == str(path)


def test_read_300w_errors(tmp_path):
    pts = tmp_path / "face.pts"
    _write_pts(pts, _face("300w68", np.random.default_rng(3)))
    with pytest.raises(AnnotationError, match="no image beside it"):
        read_300w(pts)
    _write_image(tmp_path / "face.png")
    with pytest.raises(AnnotationError, match="expected 29 points, got 68"):
        read_300w(pts, num_points=29)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.pts or \.ljson files"):
        read_300w(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_300w(tmp_path / "missing")


# --- image formats, record checks, 1-based coordinates, menpo .ljson ----------------------------------

@pytest.mark.parametrize("suffix", [".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".Png", ".Jpg"])
def test_read_300w_finds_images_in_any_format_pillow_opens(tmp_path, suffix):
    if suffix == ".webp" and not PIL_features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    _write_pts(tmp_path / "face.pts", _face("300w68", np.random.default_rng(11)))
    _write_image(tmp_path / f"face{suffix}", shape=(180, 200) if suffix == ".pgm" else (180, 200, 3))
    (tmp_path / "face.txt").write_text("not an image")
    [record] = read_300w(tmp_path)
    assert record.image_path.name == f"face{suffix}"
    image = load_image(record.image_path)
    assert image.shape == (180, 200, 3) and image.dtype == np.uint8 and abs(int(image[5, 5, 0]) - 128) <= 2


def test_read_300w_prefers_the_common_formats(tmp_path):
    _write_pts(tmp_path / "face.pts", _face("300w68", np.random.default_rng(12)))
    for suffix in (".tif", ".png", ".webp"):
        _write_image(tmp_path / f"face{suffix}")
    assert read_300w(tmp_path)[0].image_path.name == "face.png"


def test_read_300w_without_pillow_looks_for_the_listed_formats(tmp_path, monkeypatch):
    pts = _face("300w68", np.random.default_rng(19))
    for stem, suffix in (("a", ".ppm"), ("b", ".tga")):
        _write_pts(tmp_path / f"{stem}.pts", pts)
        _write_image(tmp_path / f"{stem}{suffix}")
    assert [r.image_path.name for r in read_300w(tmp_path)] == ["a.ppm", "b.tga"]  # TGA: from Pillow
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    assert read_300w(tmp_path / "a.pts")[0].image_path.name == "a.ppm"
    with pytest.raises(AnnotationError, match=r"b\.pts: no image beside it"):
        read_300w(tmp_path / "b.pts")


def test_load_image_scales_16_bit_and_float_images(tmp_path):
    ramp = np.array([[0, 257, 32896, 65535]], np.uint16)  # 8-bit values 0, 1, 128, 255
    PIL.fromarray(ramp).save(tmp_path / "gray16.png")
    PIL.fromarray(ramp).save(tmp_path / "gray16.tif")
    (tmp_path / "gray16.pgm").write_bytes(b"P5\n4 1\n65535\n" + ramp.astype(">u2").tobytes())
    PIL.fromarray(np.array([[0, 1 / 255, 0.5, 1]], np.float32)).save(tmp_path / "float32.tif")
    modes = {}
    for name in ("gray16.png", "gray16.tif", "gray16.pgm", "float32.tif"):
        with PIL.open(tmp_path / name) as opened:
            modes[name] = opened.mode
        image = load_image(tmp_path / name)
        assert image.shape == (1, 4, 3) and image.dtype == np.uint8
        assert image[0, :, 0].tolist() == [0, 1, 128, 255] and (image == image[..., :1]).all(), name
    # Every deep mode Pillow uses for these files is covered.
    assert set(modes.values()) == {"I;16", "I", "F"}, modes

    PIL.fromarray(np.array([[0.0, 2.0]], np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(AnnotationError, match=r"hdr\.tif: 'F' image with values in \[0\.0, 2\.0\]"):
        load_image(tmp_path / "hdr.tif")
    PIL.fromarray(np.array([[0, 100000]], np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(AnnotationError, match=r"int32\.tif: 'I' image .* only 0\.\.65535"):
        load_image(tmp_path / "int32.tif")


def test_face_record_built_in_python_names_its_image():
    pts = np.zeros((68, 2))
    pts[5] = np.nan
    with pytest.raises(AnnotationError, match=r"^face\.jpg: landmark 5 is \(nan, nan\), not finite$"):
        FaceRecord(pts, image_path="face.jpg")
    with pytest.raises(AnnotationError, match=r"^face\.jpg: bbox must be 4 finite numbers"):
        FaceRecord(np.zeros((68, 2)), image_path="face.jpg", bbox=[0, 0, np.nan, 10])
    with pytest.raises(AnnotationError, match=r"occluded must have shape \(68,\)"):
        FaceRecord(np.zeros((68, 2)), image_path="face.jpg", occluded=np.zeros(29, bool))
    with pytest.raises(AnnotationError, match=r"^FaceRecord: landmarks must have shape \(N, 2\)"):
        FaceRecord(np.zeros((68, 3)))
    with pytest.raises(AnnotationError, match=r"landmark 2 at \(400, 5\) lies more than one image size"):
        FaceRecord(np.array([[1.0, 1.0], [2.0, 2.0], [400.0, 5.0]]), image=np.zeros((100, 120), np.uint8))
    record = FaceRecord([[1, 2], [3, 4]], image_path="face.jpg")  # lists and str paths are converted
    assert record.landmarks.dtype == np.float64 and record.image_path.name == "face.jpg"


def test_dataset_names_the_index_of_a_bad_record(tmp_path):
    rng = np.random.default_rng(13)
    good = FaceRecord(_face("300w68", rng), image=np.zeros((180, 200), np.uint8))
    _write_image(tmp_path / "b.png", shape=(150, 150, 3))
    edited = FaceRecord(_face("300w68", rng, size=40, centre=(75, 75)), image_path=tmp_path / "b.png")
    edited.landmarks[7] = np.nan  # edited after it was built
    with pytest.raises(AnnotationError, match=r"records\[1\] \(.*b\.png\): landmark 7 is \(nan, nan\)"):
        LandmarkDataset([good, edited], "300w68")
    # Far outside: only the image, read with the item, tells.
    far = FaceRecord(_face("300w68", rng, size=40, centre=(75, 75)), image_path=tmp_path / "b.png")
    far.landmarks[3] = (5000, 30)
    data = LandmarkDataset([good, far], "300w68", image_size=32)
    assert data[0]["landmarks"].shape == (68, 2)
    message = r"records\[1\] \(.*b\.png\): landmark 3 at \(5000, 30\) lies more than one image size outside"
    with pytest.raises(AnnotationError, match=message):
        data[1]


def test_read_300w_rejects_a_landmark_far_outside_its_image_and_keeps_those_slightly_outside(tmp_path):
    pts = _face("300w68", np.random.default_rng(14))  # around (100, 90) on a 200 x 180 image
    pts[8] = (100, 180 + 30)  # a chin below the image, as in 300W
    pts[0] = (-25, 80)
    _write_pts(tmp_path / "face.pts", pts)
    _write_image(tmp_path / "face.png")
    np.testing.assert_allclose(read_300w(tmp_path)[0].landmarks, pts, atol=1e-3)
    pts[30] = (5000, 30)
    _write_pts(tmp_path / "face.pts", pts)
    with pytest.raises(AnnotationError, match=r"landmark 30 at \(5000, 30\) lies more than one image size "
                       r"outside the 200x180 image face\.png") as err:
        read_300w(tmp_path)
    assert err.value.path == str(tmp_path / "face.pts") and err.value.line == 34  # point i on line i + 4


def test_read_wflw_rejects_a_landmark_far_outside_its_image(wflw):
    path, root, _ = wflw
    lines = path.read_text().splitlines()
    fields = lines[2].split()
    fields[1] = "-400"  # y of point 0, more than one image height (180) above
    lines[2] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"landmark 0 at \(.*, -400\) lies more than one") as err:
        read_wflw(path, root)
    assert err.value.line == 3
    assert len(read_wflw(path, root, check_images=False)) == 3  # without reading the image, no size


def test_one_based_coordinates_subtract_one(tmp_path):
    pts = _face("300w68", np.random.default_rng(15))
    _write_pts(tmp_path / "face.pts", pts)
    _write_image(tmp_path / "face.png")
    file = tmp_path / "face.pts"
    np.testing.assert_allclose(read_pts(file, one_based=True), read_pts(file) - 1)
    [stored], [shifted] = read_300w(tmp_path), read_300w(tmp_path, one_based=True)
    np.testing.assert_allclose(shifted.landmarks, stored.landmarks - 1)
    path = tmp_path / "COFW_train.mat"
    scipy.io.savemat(path, _cofw_arrays())
    stored, shifted = read_cofw(path)[1], read_cofw(path, one_based=True)[1]
    np.testing.assert_allclose(shifted.landmarks, stored.landmarks - 1)
    np.testing.assert_allclose(shifted.bbox, stored.bbox - 1)


def test_train_flag_one_based_reaches_the_readers(tmp_path):
    from landmark_graph.engine import cli
    from landmark_graph.engine.training import DATASETS, TrainConfig

    rng = np.random.default_rng(16)
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        _write_pts(tmp_path / split / "face.pts", _face("300w68", rng))
        _write_image(tmp_path / split / "face.png")
    argv = ["train", "--dataset", "300w", "--data-root", str(tmp_path), "--one-based"]
    args = cli.build_parser().parse_args(argv)
    config = TrainConfig.from_dict(vars(args))
    assert config.one_based and not TrainConfig().one_based
    train, tests = DATASETS["300w"].build(config)
    for data, split in ((train, "train"), (tests["test"], "test")):
        expected = read_300w(tmp_path / split)[0].landmarks - 1
        np.testing.assert_allclose(data.shapes[0].numpy(), expected)


def _ljson(version: int, yx: list) -> dict:
    """menpo's layouts (menpo/io/input/landmark.py): v1 labelled groups, v2 one shape, v3 named shapes."""
    if version == 1:
        return {"version": 1, "groups": [
            {"label": "jaw", "connectivity": [], "landmarks": [{"point": p} for p in yx[:17]]},
            {"label": "rest", "connectivity": [], "landmarks": [{"point": p} for p in yx[17:]]},
        ]}
    if version == 2:
        return {"version": 2, "labels": [{"label": "all", "mask": list(range(len(yx)))}],
                "landmarks": {"points": yx, "connectivity": []}}
    return {"version": 3, "groups": {"PTS": {"landmarks": {"points": yx, "connectivity": []}, "labels": []}}}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_read_ljson_swaps_menpo_axes(tmp_path, version):
    pts = _face("300w68", np.random.default_rng(17))
    path = tmp_path / "face.ljson"
    path.write_text(json.dumps(_ljson(version, pts[:, ::-1].tolist())))  # menpo stores [y, x]
    np.testing.assert_allclose(read_ljson(path), pts)


def test_read_ljson_errors(tmp_path):
    path = tmp_path / "face.ljson"
    yx = [[1.0, 2.0], [3.0, 4.0]]
    groups = {"PTS": {"landmarks": {"points": yx}}, "iris": {"landmarks": {"points": yx[:1]}}}
    two = {"version": 3, "groups": groups}
    path.write_text(json.dumps(two))
    with pytest.raises(AnnotationError, match=r"holds the groups \['PTS', 'iris'\]; pass group="):
        read_ljson(path)
    assert read_ljson(path, group="iris").tolist() == [[2.0, 1.0]]
    with pytest.raises(AnnotationError, match="has no group 'eyes'"):
        read_ljson(path, group="eyes")
    cases = [
        ('{"version": 2, "landmarks": {"points": [[1, 2], [null, null]]}}', "point 1 is null"),
        ('{"version": 2, "landmarks": {"points": [[1, 2, 3]]}}', r"point 0 must be \[y, x\]"),
        ('{"version": 2, "landmarks": {"points": [[1, NaN]]}}', "two finite numbers"),
        ('{"points": [[1, 2]]}', "expected menpo's layout"),
        ('{"version": 1, "groups": [{"label": "a", "points": []}]}', "version 1 layout"),
        ('{"version": 2,\n "landmarks": ', "not valid JSON"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(AnnotationError, match=message) as err:
            read_ljson(path)
        assert err.value.path == str(path)
    assert err.value.line == 2  # JSON errors name the line


def test_read_300w_reads_ljson_beside_pts(tmp_path):
    rng = np.random.default_rng(18)
    (tmp_path / "a").mkdir()
    faces = [_face("300w68", rng), _face("300w68", rng)]
    _write_pts(tmp_path / "a" / "one.pts", faces[0])
    _write_image(tmp_path / "a" / "one.jpg")
    (tmp_path / "a" / "two.ljson").write_text(json.dumps(_ljson(2, faces[1][:, ::-1].tolist())))
    _write_image(tmp_path / "a" / "two.png")
    records = read_300w(tmp_path, one_based=True)  # .ljson is 0-based: one_based leaves it alone
    assert [r.image_path.name for r in records] == ["one.jpg", "two.png"]
    np.testing.assert_allclose(records[0].landmarks, faces[0] - 1, atol=1e-3)
    np.testing.assert_allclose(records[1].landmarks, faces[1])
    assert records[1].source == str(tmp_path / "a" / "two.ljson")
    (tmp_path / "a" / "one.ljson").write_text(json.dumps(_ljson(2, faces[0][:, ::-1].tolist())))
    with pytest.raises(AnnotationError, match=r"one\.ljson annotates the same image"):
        read_300w(tmp_path)


def _cofw_arrays(count=3, split="Tr"):
    rng = np.random.default_rng(4)
    images = np.empty((count, 1), dtype=object)
    shapes, boxes = [], []
    for i in range(count):
        images[i, 0] = rng.integers(0, 255, (120, 110) if i == 0 else (120, 110, 3), dtype=np.uint8)
        pts = _face("cofw29", rng, size=40, centre=(55, 60))
        flags = (rng.random(29) < 0.3).astype(float)
        shapes.append(np.concatenate([pts[:, 0], pts[:, 1], flags]))
        boxes.append([20.0, 25.0, 70.0, 75.0])
    return {f"Is{split}": images, f"phis{split}": np.array(shapes), f"bboxes{split}": np.array(boxes)}


def test_read_cofw_v5(tmp_path):
    data = _cofw_arrays()
    path = tmp_path / "COFW_train.mat"
    scipy.io.savemat(path, data)
    records = read_cofw(path)
    assert len(records) == 3
    assert records[0].image.shape == (120, 110) and records[1].image.shape == (120, 110, 3)
    phis = data["phisTr"]
    np.testing.assert_allclose(records[2].landmarks, np.stack([phis[2, :29], phis[2, 29:58]], 1))
    assert records[2].occluded.tolist() == (phis[2, 58:] == 1).tolist()
    assert records[0].bbox.tolist() == [20.0, 25.0, 90.0, 100.0]  # x, y, w, h -> corners
    test_path = tmp_path / "COFW_test.mat"
    scipy.io.savemat(test_path, _cofw_arrays(2, split="T"))
    assert len(read_cofw(test_path, split="test")) == 2
    with pytest.raises(AnnotationError, match="expected the variables"):
        read_cofw(test_path, split="train")


@pytest.mark.parametrize(
    ("edit", "message", "line"),
    [
        (lambda d: d["phisTr"].__setitem__((1, 60), 0.5), "occlusion flags must be 0 or 1", 2),
        (lambda d: d["phisTr"].__setitem__((2, 3), np.inf), "NaN or inf", 3),
        (lambda d: d["bboxesTr"].__setitem__((0, 2), 0.0), "width and height must be > 0", 1),
        (lambda d: d["phisTr"].__setitem__((2, 3), 1000.0), r"landmark 3 at \(1000, .*\) lies more", 3),
        (lambda d: d.update(phisTr=d["phisTr"][:, :80]), r"\(M, 87\)", None),
        (lambda d: d.update(bboxesTr=d["bboxesTr"][:2]), "must match", None),
    ],
)
def test_read_cofw_errors(tmp_path, edit, message, line):
    data = _cofw_arrays()
    edit(data)
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, data)
    with pytest.raises(AnnotationError, match=message) as err:
        read_cofw(path)
    assert err.value.line == line


def _fake_v73(path):
    # MATLAB 7.3 header (116 text bytes, 8 subsystem bytes, version 0x0200, endian 'IM') in a
    # 512-byte user block, then the HDF5 signature.
    header = b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM"
    path.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + bytes(64))


@pytest.mark.skipif(HAS_H5PY, reason="h5py is installed, so v7.3 files are readable")
def test_read_cofw_v73_without_h5py_says_what_to_install(tmp_path):
    path = tmp_path / "COFW_train_color.mat"
    _fake_v73(path)
    with pytest.raises(ImportError, match=r"v7\.3 .*h5py"):
        read_cofw(path)


@pytest.mark.skipif(not HAS_H5PY, reason="h5py not installed")
def test_read_cofw_v73_with_h5py(tmp_path):
    import h5py

    data = _cofw_arrays()
    path = tmp_path / "COFW_train_color.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = []
        for i, image in enumerate(data["IsTr"].ravel()):
            refs.append(f.create_dataset(f"img{i}", data=image.T).ref)
        f.create_dataset("IsTr", data=np.array(refs, dtype=h5py.ref_dtype)[None])
        f.create_dataset("phisTr", data=data["phisTr"].T)
        f.create_dataset("bboxesTr", data=data["bboxesTr"].T)
    records = read_cofw(path)
    assert records[1].image.shape == (120, 110, 3)
    np.testing.assert_allclose(records[1].landmarks[:, 0], data["phisTr"][1, :29])


def test_load_image_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match="cannot read the image"):
        load_image(bad)
    _write_image(tmp_path / "grey.png", shape=(5, 7))
    assert load_image(tmp_path / "grey.png").shape == (5, 7, 3)


# --- transforms and data set ---------------------------------------------------------------------

def _dot_image(points: np.ndarray, shape=(200, 220)) -> np.ndarray:
    """Black image with one bright 3x3 dot per given point (rounded)."""
    image = np.zeros((*shape, 3), np.uint8)
    for x, y in np.round(points).astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    return image


@pytest.mark.parametrize("seed", range(4))
def test_augmented_image_and_landmarks_stay_aligned(seed):
    scheme = get_scheme("300w68")
    pts = _face("300w68", np.random.default_rng(seed), size=50)
    eye = 36  # a corner that moves to index 45 under a flip
    image = _dot_image(pts[[eye]])
    aug = Augmentation(occlusion=0.0, flip=0.5)
    transform = LandmarkTransform(scheme, image_size=96, augmentation=aug)
    out = transform(image, pts, np.array([50, 40, 150, 150]), torch.Generator().manual_seed(seed))
    target = int(out["order"].tolist().index(eye))
    brightest = out["image"].sum(0).flatten().argmax()
    found = torch.tensor([brightest % 96, brightest // 96], dtype=torch.float32)
    assert torch.linalg.vector_norm(found - out["landmarks"][target]) <= 1.5
    torch.testing.assert_close(
        out["landmarks"],
        transform_points(torch.from_numpy(pts), out["transform"].double())[out["order"]].float(),
    )
    assert target == (45 if out["flipped"] else 36)


def test_flip_relabels_with_the_mirror_table():
    scheme = get_scheme("wflw98")
    pts = _face("wflw98", np.random.default_rng(5))
    box = np.array([40, 30, 160, 160])
    plain = LandmarkTransform(scheme, 64)(np.zeros((10, 10), np.uint8), pts, box)
    aug = Augmentation(rotation=0, translation=0, scale=(1, 1), flip=1.0, occlusion=0.0)
    flipped = LandmarkTransform(scheme, 64, aug)(np.zeros((10, 10), np.uint8), pts, box)
    assert flipped["flipped"]
    torch.testing.assert_close(flipped["landmarks"], scheme.flip(plain["landmarks"], width=63.0))
    # After the flip, the image-left outer eye corner is again index 60.
    assert flipped["landmarks"][60, 0] < flipped["landmarks"][72, 0]


def test_occlusion_covers_at_most_a_fifth_of_the_crop():
    aug = Augmentation(rotation=0, translation=0, scale=(1, 1), flip=0.0, occlusion=1.0)
    transform = LandmarkTransform("cofw29", 100, aug)
    pts = _face("cofw29", np.random.default_rng(6))
    fractions = []
    for seed in range(5):
        out = transform(np.full((300, 300, 3), 255, np.uint8), pts, np.array([50, 40, 150, 150]),
                        torch.Generator().manual_seed(seed))
        covered = (out["image"] != 1).any(0)
        rows, cols = covered.nonzero().T
        assert covered.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle
        fractions.append(float(covered.double().mean()))
    assert max(fractions) <= 0.2 + 0.02 and min(fractions) > 0.03
    assert max(fractions) > 0.15  # unclipped rectangles are the full fifth


def test_test_transform_is_deterministic_and_maps_the_box_to_the_centre():
    pts = _face("cofw29", np.random.default_rng(7))
    transform = LandmarkTransform("cofw29", 64)
    a = transform(_dot_image(pts), pts, np.array([60, 50, 140, 130]))
    b = transform(_dot_image(pts), pts, np.array([60, 50, 140, 130]))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    centre = transform_points(torch.tensor([[100.0, 90.0]], dtype=torch.float64), a["transform"].double())
    torch.testing.assert_close(centre, torch.tensor([[31.5, 31.5]], dtype=torch.float64))


def test_warp_image_shrinks_without_aliasing():
    image = torch.zeros(1, 400, 400)
    image[:, :, ::2] = 1.0  # one-pixel stripes average to 0.5
    crop = warp_image(image, crop_matrix([0, 0, 399, 399], 40, margin=1.0), 40)
    assert crop[:, 2:-2, 2:-2].sub(0.5).abs().max() < 0.06


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(flip=1.5), "flip"), (dict(scale=(1.2, 1.1)), "scale"), (dict(rotation=-1), "rotation")],
)
def test_augmentation_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


def test_dataset_items_batches_and_seeding(wflw):
    path, root, faces = wflw
    records = read_wflw(path, root)
    test_set = LandmarkDataset(records, "wflw98", image_size=48)
    item = test_set[1]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["attributes"].tolist() == [True, False, False, True, False, False]
    assert "occluded" not in item and item["transform"].shape == (2, 3)
    expected = transform_points(torch.from_numpy(faces[1]), item["transform"]).float()
    torch.testing.assert_close(item["landmarks"], expected, rtol=0, atol=1e-3)
    batch = next(iter(DataLoader(test_set, batch_size=2)))
    assert batch["landmarks"].shape == (2, 98, 2) and batch["attributes"].shape == (2, 6)

    train = LandmarkDataset(records, "wflw98", image_size=48, train=True, seed=3)
    again = LandmarkDataset(records, "wflw98", image_size=48, train=True, seed=3)
    assert torch.equal(train[0]["landmarks"], again[0]["landmarks"])
    first = train[0]["landmarks"]
    train.set_epoch(1)
    assert not torch.equal(train[0]["landmarks"], first)
    assert train.shapes.shape == (3, 98, 2)


def test_dataset_permutes_occlusion_flags_on_flip():
    rng = np.random.default_rng(8)
    pts = _face("cofw29", rng)
    occluded = np.zeros(29, bool)
    occluded[[0, 8, 16]] = True  # left brow corner, left eye corner, left pupil
    record = FaceRecord(pts, image=np.zeros((200, 200), np.uint8), occluded=occluded)
    aug = Augmentation(flip=1.0, occlusion=0.0)
    item = LandmarkDataset([record], "cofw29", 32, train=True, augmentation=aug, seed=0)[0]
    assert item["occluded"].nonzero().flatten().tolist() == [1, 9, 17]
    assert torch.equal(item["visible"], ~item["occluded"])


def test_dataset_rejects_records_of_another_scheme():
    record = FaceRecord(np.zeros((68, 2)), image=np.zeros((5, 5), np.uint8), source="x.pts")
    expected = r"records\[0\] \(x\.pts\): landmarks must have shape \(98, 2\)"
    with pytest.raises(AnnotationError, match=expected):
        LandmarkDataset([record], "wflw98")


# --- pose-based data balancing ----------------------------------------------------------------------

def test_procrustes_removes_similarity_transforms():
    base = get_scheme("300w68").template
    angles = np.deg2rad([0, 30, -70])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], -1).reshape(3, 2, 2)
    shapes = np.einsum("mij,nj->mni", rot, base) * np.array([1, 3, 0.5])[:, None, None] + 7
    aligned = procrustes_align(shapes)
    np.testing.assert_allclose(aligned[1], aligned[0], atol=1e-9)
    np.testing.assert_allclose(aligned[2], aligned[0], atol=1e-9)


def _yawed_set(rng):
    """90 near-frontal faces and 10 strongly turned ones (x squeezed on one side)."""
    base = get_scheme("300w68").template
    shapes = []
    for i in range(100):
        yaw = rng.uniform(-0.05, 0.05) if i < 90 else rng.uniform(0.5, 0.6)
        s = base.copy()
        s[:, 0] = np.where(s[:, 0] > 0, s[:, 0] * (1 - yaw), s[:, 0]) - yaw * 0.3
        shapes.append(s + rng.normal(0, 0.005, s.shape))
    return np.stack(shapes)


def test_pose_bins_separate_turned_faces():
    bins, projection = pose_bins(_yawed_set(np.random.default_rng(9)), num_bins=9)
    frontal, turned = set(bins[:90].tolist()), set(bins[90:].tolist())
    assert not frontal & turned
    assert bins.min() == 0 and bins.max() == 8 and projection.shape == (100,)


def test_sampler_balances_bins():
    shapes = torch.from_numpy(_yawed_set(np.random.default_rng(10)))
    generator = torch.Generator().manual_seed(0)
    sampler = PoseBalancedSampler(shapes, num_bins=9, num_samples=20000, generator=generator)
    draws = torch.tensor(list(sampler))
    assert len(sampler) == 20000 and draws.numel() == 20000
    occupied = sampler.bins.unique()
    per_bin = torch.bincount(sampler.bins[draws], minlength=9)[occupied].double() / 20000
    assert (per_bin - 1 / len(occupied)).abs().max() < 0.02
    # Without balancing the turned faces would be 10% of the draws.
    assert (draws >= 90).double().mean() > 0.2
    with pytest.raises(ValueError, match="num_samples"):
        PoseBalancedSampler(shapes, num_samples=0)
    with pytest.raises(ValueError, match=r"\(M, N, 2\)"):
        PoseBalancedSampler(shapes[:, :, :1])
