"""Landmarks on whole photos: box files, crop -> model -> image pixels, detectors, `predict`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import usable
from torch import nn

from landmark_graph.data import AnnotationError, crop_matrix, transform_points
from landmark_graph.engine import cli
from landmark_graph.engine.detectors import DETECTORS, BoxMap, get_detector, register_detector
from landmark_graph.engine.inference import (
    LandmarkPredictor,
    boxes_for,
    crop_faces,
    list_images,
    read_boxes,
    synthetic_box_map,
    uncrop_points,
)

SIZE = 32
SCHEME = "cofw29"


def _pad(points: list) -> torch.Tensor:
    """``Tensor[29, 2]``: ``points`` first, then copies of the first (a cofw29 output)."""
    points = torch.tensor(points, dtype=torch.float32)
    return torch.cat([points, points[:1].expand(29 - len(points), 2)])


class FixedPoints(nn.Module):
    """Predicts the same crop points for every crop."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("points", _pad(points))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.points.expand(len(images), -1, -1)


class BrightestPixel(nn.Module):
    """One landmark: the crop pixel with the largest red value (x, y)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images[:, 0].flatten(1).argmax(1)
        width = images.shape[-1]
        return torch.stack([flat % width, flat // width], -1)[:, None].float().expand(-1, 29, 2)


def _expected(points: torch.Tensor, box, margin: float) -> np.ndarray:
    """Crop pixels to image pixels, written out: the crop spans the box's longer side x margin."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * margin
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return centre + (points.numpy().astype(np.float64) - (SIZE - 1) / 2) * side / SIZE


# ---------------------------------------------------------------------------------------------
# Box files.


def test_read_boxes_json_and_text(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"a.jpg": [[1, 2, 11, 22], [30, 30, 40, 45.5]], "b.png": []}))
    table = read_boxes(tmp_path / "b.json")
    assert table["a.jpg"].tolist() == [[1, 2, 11, 22], [30, 30, 40, 45.5]] and table["b.png"].shape == (0, 4)
    text = "# image x0 y0 x1 y1\nmy photo.jpg 1 2 11 22\n\nmy photo.jpg 30 30 40 45.5 # 2nd\nb.png\n"
    (tmp_path / "b.txt").write_text(text)
    table = read_boxes(tmp_path / "b.txt")
    assert table["my photo.jpg"].tolist() == [[1, 2, 11, 22], [30, 30, 40, 45.5]]
    assert table["b.png"].shape == (0, 4)


@pytest.mark.parametrize("name, text, expected", [
    ("b.txt", "a.jpg 1 2 3\n", "b.txt:1: expected an image name and 4 numbers"),
    ("b.txt", "a.jpg 1 2 3 4\nb.jpg 1 2 x 4\n", "b.txt:2: box: expected 4 numbers"),
    ("b.txt", "a.jpg 10 2 3 40\n", "b.txt:1: box: box needs x_max > x_min"),
    ("b.txt", "a.jpg 1 2 nan 40\n", "b.txt:1: box: box holds NaN"),
    ("b.json", '{"a.jpg": [[1, 2, 3, 4]], "b.jpg": [[1, 2, 3]]}', "b.json: image 'b.jpg' face 1: expected"),
    ("b.json", '{"a.jpg": [[1, 2, 3, 4]],\n "b.jpg": oops}', "b.json:2: not valid JSON"),
    ("b.json", '[[1, 2, 3, 4]]', "b.json: expected an object"),
    ("b.json", '{"a.jpg": [1, 2, 3, 4]}', "image 'a.jpg' face 1: expected 4 numbers"),
])
def test_read_boxes_errors_name_file_and_line(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    with pytest.raises(AnnotationError) as error:
        read_boxes(tmp_path / name)
    assert expected in str(error.value).replace(str(tmp_path) + "/", "")


def test_boxes_for_matches_paths_then_names():
    table = {"x/a.jpg": np.ones((1, 4)), "b.jpg": np.zeros((0, 4))}
    found = boxes_for(["x/a.jpg", "y/b.jpg"], table)
    assert found[0].shape == (1, 4) and found[1].shape == (0, 4)
    with pytest.raises(ValueError, match=r"no entry for image 'y/c\.jpg'"):
        boxes_for(["y/c.jpg"], table)
    with pytest.raises(ValueError, match=r"'b\.jpg' names 2 of the images"):
        boxes_for(["y/b.jpg", "z/b.jpg"], table)


# ---------------------------------------------------------------------------------------------
# Crop -> model -> image pixels.


def test_fixed_crop_points_map_back_to_the_box():
    points = [[0.0, 0.0], [(SIZE - 1) / 2, (SIZE - 1) / 2], [SIZE - 1, 10.0]]
    predictor = LandmarkPredictor(FixedPoints(points), SCHEME, SIZE)
    boxes = np.array([[10.0, 20.0, 50.0, 40.0], [100.0, 5.0, 130.0, 75.0]])
    faces = predictor.predict(np.zeros((90, 160, 3), np.uint8), boxes)
    assert [f.box.tolist() for f in faces] == boxes.tolist()
    for face, box in zip(faces, boxes, strict=True):
        np.testing.assert_allclose(face.landmarks, _expected(_pad(points), box, 1.25), atol=1e-9)
    # The crop centre is the box centre.
    np.testing.assert_allclose(faces[1].landmarks[1], [115.0, 40.0], atol=1e-9)


def test_a_box_map_moves_the_crop_not_the_reported_box():
    box_map = BoxMap(scale=2.0, shift=(0.25, 0.0))
    centre = [[(SIZE - 1) / 2, (SIZE - 1) / 2]]
    predictor = LandmarkPredictor(FixedPoints(centre), SCHEME, SIZE, box_map=box_map)
    face, = predictor.predict(np.zeros((50, 50, 3), np.uint8), [[10.0, 10.0, 30.0, 20.0]])
    assert face.box.tolist() == [10.0, 10.0, 30.0, 20.0]
    np.testing.assert_allclose(face.landmarks[0], [25.0, 15.0], atol=1e-9)  # centre 20 + 0.25 * 20


@pytest.mark.parametrize("dot", [(37, 81), (120, 60)])
def test_a_bright_dot_is_found_where_it_is_in_the_image(dot):
    image = np.zeros((100, 160, 3), np.uint8)
    image[dot[1], dot[0]] = 255
    box = np.array([dot[0] - 20.0, dot[1] - 30.0, dot[0] + 25.0, dot[1] + 10.0])
    face, = LandmarkPredictor(BrightestPixel(), SCHEME, 64).predict(image, box[None])
    # One crop pixel is 45 * 1.25 / 64 < 1 image pixel.
    np.testing.assert_allclose(face.landmarks[0], dot, atol=1.0)


def test_without_boxes_the_whole_image_is_the_crop():
    points = [[-0.5, -0.5], [SIZE - 0.5, SIZE - 0.5], [(SIZE - 1) / 2, 0.0]]
    face, = LandmarkPredictor(FixedPoints(points), SCHEME, SIZE).predict(
        np.zeros((40, 80, 3), np.uint8))
    assert face.box is None and face.score is None
    # The longer side fills the crop; the shorter one is padded.
    np.testing.assert_allclose(face.landmarks[:2], [[-0.5, -20.5], [79.5, 59.5]], atol=1e-9)


def test_batches_across_images_equal_one_by_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(58),
                          nn.Unflatten(1, (29, 2)))
    model(torch.zeros(1, 3, SIZE, SIZE))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60 + 10 * i, 90, 3), dtype=np.uint8) for i in range(5)]
    boxes = [np.array([[5, 5, 40, 50], [40, 10, 80, 55]]), np.zeros((0, 4)), np.array([[10, 0, 70, 60]]),
             np.array([[0, 0, 30, 30], [30, 30, 60, 60], [50, 20, 85, 55]]), None]
    predictor = LandmarkPredictor(model, SCHEME, SIZE, batch_size=3)
    together = list(predictor.predict_many(zip(images, boxes, strict=True)))
    alone = [predictor.predict(image, box) for image, box in zip(images, boxes, strict=True)]
    assert [len(f) for f in together] == [2, 0, 1, 3, 1]
    for batch_faces, single_faces in zip(together, alone, strict=True):
        for a, b in zip(batch_faces, single_faces, strict=True):
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-5)


def test_crop_faces_is_the_training_crop():
    from landmark_graph.data import LandmarkTransform

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    box = np.array([12.0, 8.0, 60.0, 50.0])
    crops, maps = crop_faces(image, box[None], SIZE)
    training = LandmarkTransform(SCHEME, SIZE)(image, np.zeros((29, 2)), torch.tensor(box))
    torch.testing.assert_close(crops[0], training["image"])
    torch.testing.assert_close(maps[0, :2].float(), training["transform"])
    points = torch.tensor([[[3.0, 4.0], [20.0, 11.0]]])
    torch.testing.assert_close(transform_points(uncrop_points(points, maps)[0], maps[0]), points[0].double())


def test_synthetic_box_map_frames_synthetic_faces_like_their_images():
    from landmark_graph.data import SyntheticFaces

    size, box_map = 64, synthetic_box_map("cofw29", 64)
    # 512 faces: the median centre of 60 strays by about 1 px (its y spread is 2.5 px).
    shapes = SyntheticFaces("cofw29", 512, size, seed=123).landmarks().double().numpy()
    boxes = box_map(np.concatenate([shapes.min(1), shapes.max(1)], 1))
    # The crop a synthetic face's landmark box gives is, for the median face, the image itself.
    scales = [float(crop_matrix(b, size)[0, 0]) for b in boxes]
    assert box_map.scale > 1.1
    assert np.median(scales) == pytest.approx(1.0, abs=0.03)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # the points the crops are centred on
    np.testing.assert_allclose(np.median(centres, 0), [(size - 1) / 2] * 2, atol=1.0)


# ---------------------------------------------------------------------------------------------
# Detectors.


@pytest.fixture
def fake_detector():
    @register_detector("test-fake", box_map=BoxMap(scale=0.5))
    def fake(image):
        return np.array([[0.0, 0.0, 20.0, 20.0], [30.0, 10.0, 50.0, 40.0]]), np.array([0.2, 0.9])

    yield "test-fake"
    DETECTORS.unregister("test-fake")


def test_detector_registry(fake_detector):
    detector = get_detector(fake_detector)
    boxes, scores = detector(np.zeros((50, 60, 3), np.uint8))
    assert scores.tolist() == [0.9, 0.2] and boxes[0].tolist() == [30.0, 10.0, 50.0, 40.0]  # best first
    with pytest.raises(ValueError, match="already registered"):
        register_detector(fake_detector)(lambda image: (np.zeros((0, 4)), np.zeros(0)))
    with pytest.raises(ValueError, match=r"unknown detector 'nope'; registered: .*test-fake"):
        get_detector("nope")
    assert get_detector("landmark_graph.engine.detectors:test-fake") is detector  # module:name imports first
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        get_detector("no_such_module:fake")
    with pytest.raises(ValueError, match="takes an ndarray"):
        detector(np.zeros((50, 60), np.uint8))


def test_detector_output_is_checked():
    @register_detector("test-bad")
    def bad(image):
        return np.array([[0.0, 0.0, 20.0, 20.0]]), np.array([0.1, 0.2])

    try:
        with pytest.raises(ValueError, match="returned 1 boxes but 2 scores"):
            get_detector("test-bad")(np.zeros((50, 60, 3), np.uint8))
    finally:
        DETECTORS.unregister("test-bad")


def test_predictor_uses_the_detector_and_its_box_map(fake_detector):
    points = [[(SIZE - 1) / 2, (SIZE - 1) / 2], [SIZE - 0.5, SIZE - 0.5]]
    predictor = LandmarkPredictor(FixedPoints(points), SCHEME, SIZE, detector=fake_detector)
    faces = predictor.predict(np.zeros((50, 60, 3), np.uint8))
    assert [f.score for f in faces] == [0.9, 0.2] and faces[0].box.tolist() == [30.0, 10.0, 50.0, 40.0]
    # The crop is around the half-size box (30 px longer side -> 15), times the margin.
    corner = 40.0 + 15 * 1.25 / 2, 25.0 + 15 * 1.25 / 2
    np.testing.assert_allclose(faces[0].landmarks[:2], [[40.0, 25.0], corner], atol=1e-9)
    # Boxes given win over the detector.
    assert predictor.predict(np.zeros((50, 60, 3), np.uint8), np.zeros((0, 4))) == []


def test_box_map_fit_recovers_a_map():
    rng = np.random.default_rng(0)
    centre, side = rng.uniform(50, 150, (20, 2)), rng.uniform(20, 60, (20, 1))
    source = np.concatenate([centre - side / 2, centre + side / 2], 1)
    truth = BoxMap(scale=0.9, shift=(0.02, 0.19))
    fitted = BoxMap.fit(source, truth(source))
    assert fitted.scale == pytest.approx(0.9) and fitted.shift == pytest.approx((0.02, 0.19))
    with pytest.raises(ValueError, match="same faces"):
        BoxMap.fit(source, source[:3])


@pytest.mark.skipif(not usable("cv2"), reason="OpenCV is not installed: pip install 'landmark-graph[detect]'")
def test_haar_finds_grace_hopper():
    import cv2
    from matplotlib import cbook

    if not hasattr(cv2, "data"):
        pytest.skip(f"OpenCV {cv2.__version__} ships no Haar cascades")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        from PIL import Image

        image = np.array(Image.open(handle).convert("RGB"))
    boxes, scores = get_detector("haar")(image)
    assert len(boxes) == 1 and scores[0] > 0
    # Her face spans about x 180-360, y 110-330 of the 512 x 600 photo.
    centre = (boxes[0, :2] + boxes[0, 2:]) / 2
    assert 180 < centre[0] < 360 and 110 < centre[1] < 330
    assert 120 < boxes[0, 2] - boxes[0, 0] < 300


# ---------------------------------------------------------------------------------------------
# The command.


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from landmark_graph.engine.training import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(scheme="cofw29", image_size=32, train_size=8, test_size=2, backbone_width=8,
                         hidden_features=16, num_blocks=1, head_channels=16, batch_size=4, epochs=1,
                         steps_per_epoch=1, progress=False, out_dir=str(out))
    return train(config)["checkpoint"]


@pytest.fixture
def photos(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (60, 80, 3)), ("b.jpg", (50, 50, 3))):
        plt.imsave(folder / name, rng.integers(0, 256, shape, dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landmark-graph: error: "), err
    return err[0]


def test_list_images_takes_files_and_folders(photos):
    assert [p.name for p in list_images([photos])] == ["a.png", "b.jpg"]
    assert list_images([photos / "b.jpg", photos]) == [photos / "b.jpg", photos / "a.png", photos / "b.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images([photos / "missing.png"])
    (photos.parent / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files in folder"):
        list_images([photos.parent / "empty"])


def test_predict_boxes_file_folder_and_drawings(checkpoint, photos, tmp_path, capsys):
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[5, 5, 30, 40], [40, 10, 75, 50]],
                                                     "b.jpg": []}))
    (photos / "a.pts").write_text("version: 1\nn_points: 3\n{\n10 10\n20 20\n15 30\n}\n")
    output = tmp_path / "out.json"
    argv = ["predict", checkpoint, str(photos), "--boxes", str(tmp_path / "boxes.json"), "--output",
            str(output), "--draw", str(tmp_path / "drawn"), "--truth", str(photos), "--batch-size", "1",
            "--threads", "1"]
    assert cli.main(argv) == 0
    assert "2 faces in 2 images" in capsys.readouterr().err
    result = json.loads(output.read_text())
    assert result["scheme"] == "cofw29" and result["num_landmarks"] == 29 and result["detector"] is None
    a, b = result["images"]
    assert (Path(a["path"]).name, a["width"], a["height"]) == ("a.png", 80, 60) and b["faces"] == []
    assert [f["box"] for f in a["faces"]] == [[5, 5, 30, 40], [40, 10, 75, 50]]
    assert all(np.shape(f["landmarks"]) == (29, 2) and f["score"] is None for f in a["faces"])
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a_landmarks.png", "b_landmarks.png"]


def test_predict_one_image_with_box_flags_or_a_detector(checkpoint, photos, fake_detector, capsys):
    image = str(photos / "a.png")
    boxes = ["--box", "5", "5", "30", "40", "--box", "40", "10", "75", "50"]
    assert cli.main(["predict", checkpoint, image, *boxes]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [f["box"] for f in printed["images"][0]["faces"]] == [[5, 5, 30, 40], [40, 10, 75, 50]]
    assert cli.main(["predict", checkpoint, image, "--detector", fake_detector]) == 0
    faces = json.loads(capsys.readouterr().out)["images"][0]["faces"]
    assert [f["score"] for f in faces] == [0.9, 0.2]
    assert cli.main(["predict", checkpoint, image, "--detector", fake_detector, "--min-score", "0.5"]) == 0
    assert [f["score"] for f in json.loads(capsys.readouterr().out)["images"][0]["faces"]] == [0.9]
    assert cli.main(["predict", checkpoint, image]) == 0  # no boxes: the image is the crop
    assert json.loads(capsys.readouterr().out)["images"][0]["faces"][0]["box"] is None


@pytest.mark.parametrize("extra, expected", [
    (["--box", "1", "2", "3", "4"], "--box gives the faces of one image, got 2 images"),
    (["--boxes", "b.json", "--detector", "haar"], "not allowed with argument"),
    (["--detector", "nope"], "unknown detector 'nope'"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--min-score", "3"], "--min-score filters a --detector's faces"),
    (["--boxes", "missing.json"], "box file 'missing.json' does not exist"),
    (["--truth", "missing"], "--truth 'missing' does not exist"),
])
def test_predict_user_errors(checkpoint, photos, extra, expected, capsys, monkeypatch):
    monkeypatch.chdir(photos)
    assert cli.main(["predict", checkpoint, str(photos), *extra]) == 2
    assert expected in _error_line(capsys)


def test_predict_box_file_without_an_image(checkpoint, photos, tmp_path, capsys):
    (tmp_path / "b.txt").write_text("a.png 1 2 30 40\n")
    assert cli.main(["predict", checkpoint, str(photos), "--boxes", str(tmp_path / "b.txt")]) == 2
    line = _error_line(capsys)
    assert "b.txt has no entry for image" in line and "b.jpg" in line


def test_calibrate_detector_example_recovers_a_known_map(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from landmark_graph.schemes import get_scheme

    plt = pytest.importorskip("matplotlib.pyplot")
    template = get_scheme("300w68").template
    for i, (scale, centre) in enumerate([(20.0, (60, 50)), (30.0, (50, 70)), (25.0, (70, 60))]):
        points = template * scale + centre
        body = "".join(f"{x} {y}\n" for x, y in points)
        (tmp_path / f"face{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}}}\n")
        plt.imsave(tmp_path / f"face{i}.png", np.full((120, 130, 3), i * 40, np.uint8))
    truth = {i * 40: np.concatenate([(template * s + c).min(0), (template * s + c).max(0)])
             for i, (s, c) in enumerate([(20.0, (60, 50)), (30.0, (50, 70)), (25.0, (70, 60))])}
    hidden = BoxMap(scale=1.2, shift=(0.0, -0.1))

    @register_detector("test-framing")
    def framing(image):  # knows the face by the image's grey level, frames it its own way
        return hidden(truth[int(image[0, 0, 0])]), np.ones(1)

    monkeypatch.setattr(sys, "argv", ["calibrate_detector.py", str(tmp_path), "--detector", "test-framing"])
    try:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "calibrate_detector.py"),
                       run_name="__main__")
    finally:
        DETECTORS.unregister("test-framing")
    out = capsys.readouterr().out
    assert "fitted on 3 faces: BoxMap(scale=0.833, shift=(0.000, 0.083))" in out  # hidden's inverse
    assert out.count("1.000") == 3  # the mapped boxes are the landmark boxes


def test_predict_turns_photos_upright_by_their_exif_orientation(checkpoint, tmp_path, capsys):
    from PIL import Image

    stored = Image.fromarray(np.zeros((40, 70, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: the camera was turned, show the pixels rotated by 90 degrees
    stored.save(tmp_path / "phone.jpg", exif=exif)
    output = tmp_path / "out.json"
    assert cli.main(["predict", checkpoint, str(tmp_path / "phone.jpg"), "--output", str(output)]) == 0
    (image,) = json.loads(output.read_text())["images"]
    assert (image["width"], image["height"]) == (40, 70)


def test_predict_names_the_face_a_model_returns_nan_for(checkpoint, photos, capsys, monkeypatch):
    original = LandmarkPredictor.from_checkpoint

    def nan_model(*args, **kwargs):
        predictor = original(*args, **kwargs)
        predictor.model = FixedPoints([[float("nan"), float("nan")]])
        return predictor

    monkeypatch.setattr(LandmarkPredictor, "from_checkpoint", nan_model)
    assert cli.main(["predict", checkpoint, str(photos / "a.png")]) == 2
    assert "non-finite landmarks for face 0 of" in _error_line(capsys)


def test_predict_draws_images_of_the_same_name_in_two_folders(checkpoint, photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((photos / "a.png").read_bytes())
    drawn = tmp_path / "drawn"
    assert cli.main(["predict", checkpoint, str(photos / "a.png"), str(other / "a.png"), "--draw",
                     str(drawn), "--output", str(tmp_path / "out.json")]) == 0
    assert sorted(p.name for p in drawn.iterdir()) == ["a_0_landmarks.png", "a_1_landmarks.png"]


class WithDetails(nn.Module):
    """Fixed crop points, visibility logits and Laplace scales (the ``return_details`` call)."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("points", _pad(points))

    def forward(self, images: torch.Tensor, return_details: bool = False):
        from landmark_graph.heads import HeadOutput

        landmarks = self.points.expand(len(images), -1, -1).clone()
        if not return_details:
            return landmarks
        logits = torch.linspace(-3, 3, 29).expand(len(images), -1)
        log_scale = torch.tensor([0.0, math.log(2.0)]).expand(len(images), 29, 2)
        return HeadOutput(landmarks, logits, log_scale)


def test_predictor_maps_visibility_and_scales_to_the_image():
    """Visibility as probabilities; scales in image pixels: a face box twice the crop's size
    doubles them, per axis, like the landmarks' offsets."""
    box = np.array([[10.0, 20.0, 10.0 + 2 * SIZE / 1.25, 20.0 + 2 * SIZE / 1.25]])  # crop scale 1/2
    predictor = LandmarkPredictor(WithDetails([[5.0, 5.0]]), SCHEME, SIZE, details=True)
    face, = predictor.predict(np.zeros((120, 120, 3), np.uint8), box)
    np.testing.assert_allclose(face.visibility, torch.sigmoid(torch.linspace(-3, 3, 29)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(face.scale, np.tile([2.0, 4.0], (29, 1)), rtol=1e-6)
    out = face.to_dict()
    assert len(out["visibility"]) == 29 and np.asarray(out["scale"]).shape == (29, 2)
    image = np.zeros((120, 120, 3), np.uint8)
    plain, = LandmarkPredictor(WithDetails([[5.0, 5.0]]), SCHEME, SIZE).predict(image, box)
    assert plain.visibility is None and plain.scale is None and "visibility" not in plain.to_dict()
