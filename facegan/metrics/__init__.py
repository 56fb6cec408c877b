"""Offline evaluation metrics: feature networks, FID/KID, precision/recall, diversity, memorisation.

    from facegan.metrics import compute_metrics, load_inception, extract_features, shard_features
    inception = load_inception(weights_path)
    scores = compute_metrics(feature_name=inception.name,
                             real_train_feats=shard_features(inception, shards_dir=d, split="train", max_images=10_000),
                             real_eval_feats=shard_features(inception, shards_dir=d, split="val", max_images=10_000),
                             fake_feats=extract_features(inception, fake_BCHW), fake_images=fake_BCHW)

Face identity (dlib's descriptor, facegan.metrics.face): `face_extractor()` is the "face" feature
network (fid_face, kid_face, precision/recall_face, identity_diversity); `detect_faces` gives the
flags of the face_detection metric.

Importing this package registers every metric in METRICS (see facegan.metrics.registry).

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from facegan.metrics import diversity, discriminator, face, fid, kid, memorisation, precision_recall  # noqa: F401  (registers)
from facegan.metrics.baseline import random_baseline_images
from facegan.metrics.discriminator import discriminator_accuracy
from facegan.metrics.diversity import collapse_alarm, ms_ssim_diversity, ms_ssim_settings, pairwise_ms_ssim
from facegan.metrics.features import (
    AttrFeatures,
    FeatureExtractor,
    FolderImages,
    InceptionWeightsError,
    as_float_images,
    as_uint8_images,
    attr_extractor,
    extract_features,
    load_inception,
    load_shard_images,
    read_image_folder,
    shard_features,
    shard_images,
)
from facegan.metrics.face import (
    FACE_NAME,
    SAME_PERSON_THRESHOLD,
    FaceDescriptors,
    FaceFeatures,
    describe_faces,
    detect_faces,
    face_available,
    face_descriptors,
    face_distance,
    face_extractor,
    identity_diversity,
)
from facegan.metrics.fid import fid_from_features
from facegan.metrics.kid import kid_from_features
from facegan.metrics.memorisation import memorisation as memorisation_distances
from facegan.metrics.precision_recall import precision_recall as precision_recall_from_features
from facegan.metrics.registry import (
    METRICS,
    MetricInputs,
    MetricOptions,
    MetricSpec,
    compute_metrics,
    register_metric,
    result_name,
)

__all__ = [
    "FACE_NAME", "SAME_PERSON_THRESHOLD", "FaceDescriptors", "FaceFeatures", "describe_faces", "detect_faces",
    "face_available", "face_descriptors", "face_distance", "face_extractor", "identity_diversity",
    "METRICS", "AttrFeatures", "FeatureExtractor", "FolderImages", "InceptionWeightsError", "MetricInputs",
    "MetricOptions", "MetricSpec", "as_float_images", "as_uint8_images", "attr_extractor", "collapse_alarm",
    "compute_metrics", "discriminator_accuracy", "extract_features", "fid_from_features", "kid_from_features",
    "load_inception", "load_shard_images", "memorisation_distances", "ms_ssim_diversity", "ms_ssim_settings",
    "pairwise_ms_ssim", "precision_recall_from_features", "random_baseline_images", "read_image_folder",
    "register_metric", "result_name", "shard_features", "shard_images",
]
