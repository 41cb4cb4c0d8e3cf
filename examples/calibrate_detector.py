"""Fit the box map from a face detector's boxes to landmark boxes on annotated photos.

A landmark model is cropped around the extent of the face's landmarks (300W, synthetic faces);
a detector frames faces its own way. Given photos with ``.pts`` files beside them (the 300W
layout), this runs the detector, pairs each annotated face with the detection that holds its
centre, and fits :class:`~landmark_graph.engine.detectors.BoxMap` (median scale and shift). It prints,
per face, the overlap (IoU) with the landmark box of the detector's box as is, through the
detector's registered map, and through the map fitted on the *other* faces (leave-one-out), then
the map fitted on all of them:

    python examples/calibrate_detector.py PHOTOS --detector haar

Then ``register_detector(name, box_map=...)`` or ``LandmarkPredictor(..., box_map=...)``.
With ``--checkpoint CKPT`` (a model of the photos' scheme) it also prints each face's NME with
the model cropped around each of these boxes, and with the whole image as the crop.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from landmark_graph import nme
from landmark_graph.data import load_image, read_300w
from landmark_graph.engine.detectors import BoxMap, get_detector
from landmark_graph.engine.inference import LandmarkPredictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x_min, y_min, x_max, y_max)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="photos with a .pts file beside each (searched recursively)")
    parser.add_argument("--detector", default="haar")
    parser.add_argument("--points", type=int, default=68, help="points per .pts file")
    parser.add_argument("--checkpoint", help="also the model's NME with each box")
    args = parser.parse_args()

    detector = get_detector(args.detector)
    pairs = []
    for record in read_300w(args.folder, args.points):
        truth = record.box()
        centre = (truth[:2] + truth[2:]) / 2
        boxes, _ = detector(load_image(record.image_path))
        holding = [b for b in boxes if b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3]]
        if not holding:
            print(f"{record.image_path.name}: missed ({len(boxes)} other detections)")
            continue
        pairs.append((record, max(holding, key=lambda b: iou(b, truth)), truth))
    if len(pairs) < 2:
        raise SystemExit(f"{len(pairs)} annotated faces detected: need 2 or more to fit and check a map")
    detected, truths = np.stack([p[1] for p in pairs]), np.stack([p[2] for p in pairs])
    predictor = LandmarkPredictor.from_checkpoint(args.checkpoint) if args.checkpoint else None
    # Boxes per face: the landmark box, the detector's as is, through its registered box map,
    # through the map fitted on the other faces.
    kinds = ["landmark", "detector", "its box_map", "leave-one-out"]
    print(f"{'face':<20}" + "".join(f"{'IoU ' + k:>18}" for k in kinds[1:])
          + ("".join(f"{'NME ' + k:>18}" for k in kinds) + f"{'NME whole image':>18}" if predictor else ""))
    for i, (record, box, truth) in enumerate(pairs):
        others = np.arange(len(pairs)) != i
        left_out = BoxMap.fit(detected[others], truths[others])
        boxes = np.stack([truth, box, detector.box_map(box)[0], left_out(box)[0]])
        line = f"{record.image_path.name:<20}" + "".join(f"{iou(b, truth):>18.3f}" for b in boxes[1:])
        if predictor:
            image = load_image(record.image_path)
            faces = predictor.predict(image, boxes) + predictor.predict(image, None)
            errors = nme(torch.tensor(np.stack([f.landmarks for f in faces])),
                         torch.tensor(record.landmarks).expand(len(faces), -1, -1), scheme=predictor.scheme)
            line += "".join(f"{e:>18.3f}" for e in errors.tolist())
        print(line)
    fitted = BoxMap.fit(detected, truths)
    print(f"fitted on {len(pairs)} faces: BoxMap(scale={fitted.scale:.3f}, "
          f"shift=({fitted.shift[0]:.3f}, {fitted.shift[1]:.3f}))")


if __name__ == "__main__":
    main()
