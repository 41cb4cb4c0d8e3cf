"""Data sets: readers for WFLW, 300W (``.pts``, menpo ``.ljson``) and COFW, a cropping and
augmenting ``Dataset``, and Pose-based Data Balancing. The procedural faces live in
:mod:`landmark_graph.data.synthetic`."""

from .dataset import LandmarkDataset
from .readers import (
    AnnotationError,
    FaceRecord,
    load_image,
    read_300w,
    read_cofw,
    read_ljson,
    read_pts,
    read_wflw,
)
from .sampler import PoseBalancedSampler, pose_bins, procrustes_align
from .synthetic import SyntheticFaces
from .transforms import (
    Augmentation,
    LandmarkTransform,
    augment_matrix,
    crop_matrix,
    transform_points,
    warp_image,
)

__all__ = [
    "AnnotationError",
    "Augmentation",
    "FaceRecord",
    "LandmarkDataset",
    "LandmarkTransform",
    "PoseBalancedSampler",
    "SyntheticFaces",
    "augment_matrix",
    "crop_matrix",
    "load_image",
    "pose_bins",
    "procrustes_align",
    "read_300w",
    "read_cofw",
    "read_ljson",
    "read_pts",
    "read_wflw",
    "transform_points",
    "warp_image",
]
