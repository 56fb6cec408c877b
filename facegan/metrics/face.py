"""Face identity by a pretrained face-recognition network: dlib's ResNet 128-d face descriptor.

    from facegan.metrics.face import face_descriptors, describe_faces, detect_faces, face_distance
    d_N128 = face_descriptors(G(z))                       # float BCHW in [-1, 1], or uint8 BCHW / HWC numpy
    same = face_distance(face_descriptors(photos), face_descriptors(recons)) < SAME_PERSON_THRESHOLD
    faces = describe_faces(photos, align="detect")        # .descriptors (N, 128), .detected (N,) bool
    found = detect_faces(G(z))                            # (N,) bool, dlib's HOG detector (or "mmod")

One path for real and generated faces alike, so the two sets are measured the same way:

1. every image becomes uint8 RGB HxWx3 (grey is replicated to three channels; 16-bit or other
   pixel types are refused with one line naming the image);
2. it is resized (bicubic) so its shorter side is WORK_SIZE px (160: the 64 px faces facegan
   trains on are too small for dlib's HOG detector, ~80 px across is its smallest face), the longer
   side at most MAX_SIZE;
3. the face box is FACE_BOX, a fixed box in the centred square (facegan's images are aligned crops:
   CelebA's img_align_celeba centre-cropped square), or with align="detect" the largest box dlib's
   detector finds, FACE_BOX where it finds none (the `detected` flag reports it per image);
4. dlib's 5-point landmark model places eyes and nose in that box, `dlib.get_face_chip` warps the
   face to the 150x150 chip the descriptor was trained on (padding 0.25, dlib's default);
5. the chips go through the ResNet descriptor in batches (one `compute_face_descriptor` call per
   batch). Two descriptors closer than SAME_PERSON_THRESHOLD (0.6, dlib's) are the same person.

The models come from the `face_recognition_models` package (read from its files; its __init__ is
not imported because it needs pkg_resources, which setuptools >= 81 no longer ships), dlib from
`dlib-bin`. Both are in requirements.lock and the `face` extra; where they are missing or a model
file is damaged, every entry point raises FaceModelError with one line saying how to install.

    .venv/bin/python -m pytest tests/test_face.py -q
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from facegan.errors import DataError, FaceModelError
from facegan.images import as_uint8_images
from facegan.metrics.features import FeatureExtractor
from facegan.metrics.registry import MetricInputs, register_metric

FACE_NAME = "face"
DESCRIPTOR_DIM = 128
SAME_PERSON_THRESHOLD = 0.6      # dlib's: 99.38% same/different accuracy on LFW at this distance
WORK_SIZE = 160                  # shorter side the image is resized to before detection and landmarks
MAX_SIZE = 800                   # ... and the bound on its longer side (large photos are shrunk)
CHIP_SIZE = 150                  # the descriptor's input, aligned as dlib.get_face_chip does it
CHIP_PADDING = 0.25
# (left, top, right, bottom) as fractions of the centred square: the median box dlib's HOG
# detector finds on CelebA aligned crops (60 val photos at 64 px, spread about 0.03).
FACE_BOX = (0.22, 0.35, 0.77, 0.90)
DETECTORS = ("hog", "mmod")
# The face-identity scores reports show (facegan compare, the sweep report), in this order.
FACE_SCORES = ("fid_face", "kid_face", "precision_face", "recall_face", "identity_diversity",
               "identity_diversity_real", "face_detection_rate", "face_detection_rate_real")
MAX_BATCH = 1024                 # chips per descriptor call: bounds the memory of one call

MODEL_FILES = {
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "mmod": "mmod_human_face_detector.dat",
}
INSTALL_HELP = ("install dlib-bin and face_recognition_models: `pip install 'facegan[face]'` "
                "(both are pinned in requirements.lock; `make install` brings them)")

Align = Literal["box", "detect"]
Detector = Literal["hog", "mmod"]


# -- models ------------------------------------------------------------------------------------

def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise FaceModelError(f"face metrics need dlib, which cannot be imported ({exc}); {INSTALL_HELP}") from None
    return dlib


def face_models_dir() -> Path:
    """The `models/` folder of the installed face_recognition_models package (FaceModelError if none)."""
    override = os.environ.get("FACEGAN_FACE_MODELS")   # another copy of the models/ folder
    if override:
        return Path(override)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelError(f"face metrics need the face_recognition_models package, which is not installed; "
                             f"{INSTALL_HELP}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def face_available() -> bool:
    """Whether dlib imports and the model files are there (not whether they load: see load_face_models)."""
    try:
        _import_dlib()
        d = face_models_dir()
    except FaceModelError:
        return False
    return all((d / MODEL_FILES[k]).is_file() for k in ("descriptor", "landmarks"))


def skipped_note() -> str:
    """The line `--face auto` prints when the face metrics are left out for want of the packages."""
    return f"note: face metrics (fid_face, identity_diversity, ...) skipped: {INSTALL_HELP}"


@dataclass(frozen=True)
class FaceModels:
    """dlib's descriptor, 5-point landmark model and a face detector, loaded once per process."""

    descriptor: Any
    landmarks: Any
    detector: Any
    detector_name: str
    models_dir: Path


@functools.lru_cache(maxsize=1)
def _recorded_hashes() -> dict[str, str]:
    """{file name: urlsafe-base64 sha256} of the model files as the installed wheel's RECORD lists them."""
    from importlib import metadata

    try:
        files = metadata.distribution("face_recognition_models").files or []
    except metadata.PackageNotFoundError:
        return {}
    return {f.name: f.hash.value for f in files if f.hash is not None and f.hash.mode == "sha256"
            and f.name in MODEL_FILES.values()}


def _sha256_b64(path: Path) -> str:
    import base64
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def _load(dlib: Any, kind: str, path: Path, loader: Any) -> Any:
    if not path.is_file():
        raise FaceModelError(f"face model file not found: {path}; {INSTALL_HELP}")
    # A flipped byte inside the weights would load and give wrong distances: compare with the
    # wheel's RECORD first (about 0.1 s for the two files, once per process).
    expected = _recorded_hashes().get(path.name)
    if expected is not None and _sha256_b64(path) != expected:
        raise FaceModelError(f"{path}: damaged {kind} model file (its sha256 differs from the one "
                             f"face_recognition_models' RECORD lists); reinstall it with "
                             f"`pip install --force-reinstall face_recognition_models==0.3.0`")
    try:
        return loader(str(path))
    except (RuntimeError, ValueError, OSError) as exc:  # dlib raises RuntimeError on a bad stream
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FaceModelError(f"{path}: damaged {kind} model file ({first}); reinstall it with "
                             f"`pip install --force-reinstall face_recognition_models==0.3.0`") from None


@functools.lru_cache(maxsize=4)
def _cached_models(models_dir: str, detector: str) -> FaceModels:
    dlib = _import_dlib()
    d = Path(models_dir)
    descriptor = _load(dlib, "face descriptor", d / MODEL_FILES["descriptor"], dlib.face_recognition_model_v1)
    landmarks = _load(dlib, "5-point landmark", d / MODEL_FILES["landmarks"], dlib.shape_predictor)
    if detector == "mmod":
        det = _load(dlib, "MMOD face detector", d / MODEL_FILES["mmod"], dlib.cnn_face_detection_model_v1)
    else:
        det = dlib.get_frontal_face_detector()
    return FaceModels(descriptor=descriptor, landmarks=landmarks, detector=det, detector_name=detector, models_dir=d)


def load_face_models(*, models_dir: str | Path | None = None, detector: Detector = "hog") -> FaceModels:
    """The dlib models from `models_dir` (default: the installed package's), cached per process.

    Raises FaceModelError (one line: which file, how to install or reinstall) when dlib or the
    package is missing or a model file is missing or damaged.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector: expected one of {DETECTORS}, got {detector!r}")
    return _cached_models(str(Path(models_dir) if models_dir is not None else face_models_dir()), detector)


# -- images ------------------------------------------------------------------------------------

def _one_image(img: np.ndarray, i: int) -> np.ndarray:
    if img.dtype != np.uint8:
        what = "16-bit" if img.dtype in (np.uint16, np.int16) else str(img.dtype)
        raise DataError(f"image {i}: {what} pixels; expected 8-bit (uint8) RGB numpy arrays or float tensors "
                        f"in [-1, 1] (convert 16-bit with `(img >> 8).astype(np.uint8)`)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise DataError(f"image {i}: shape {tuple(img.shape)}; expected (H, W, 3) RGB or (H, W) grey")
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise DataError(f"image {i}: {img.shape[1]}x{img.shape[0]} px; expected at least 8x8")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)   # grey: the descriptor sees R = G = B
    return img


def as_face_images(images: Tensor | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """uint8 RGB HxWx3 arrays from a BCHW tensor (uint8, or float in [-1, 1]), an (H, W, 3) or
    (N, H, W, 3) uint8 array, or a list of (H, W, 3) / (H, W) uint8 arrays of any sizes."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
        if images.dtype == torch.int16 or images.dtype == torch.uint16:
            raise DataError("images: 16-bit pixels; expected a uint8 tensor or a float tensor in [-1, 1]")
        if images.is_floating_point() and images.numel():
            lo, hi = float(images.min()), float(images.max())
            if lo < -1.001 or hi > 1.001:
                raise DataError(f"images: float images must lie in [-1, 1] (pass uint8 for [0, 255]), "
                                f"got [{lo:.3g}, {hi:.3g}]")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DataError(f"images: expected uint8 or float pixels, got {images.dtype}")
        arr = as_uint8_images(images).permute(0, 2, 3, 1).cpu().numpy()
        return [_one_image(a, i) for i, a in enumerate(arr)]
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):        # one image: (H, W) grey or (H, W, C)
            return [_one_image(images, 0)]
        if images.ndim != 4:
            raise DataError(f"images: expected (H, W, 3) or (N, H, W, 3) uint8, got shape {tuple(images.shape)}")
    return [_one_image(np.asarray(a), i) for i, a in enumerate(images)]


def _work_image(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    scale = WORK_SIZE / min(h, w)
    if max(h, w) * scale > MAX_SIZE:
        scale = MAX_SIZE / max(h, w)
    if abs(scale - 1.0) < 1e-6:
        return np.ascontiguousarray(img)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def _fixed_box(dlib: Any, h: int, w: int) -> Any:
    side = min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
    l, t, r, b = FACE_BOX
    return dlib.rectangle(round(x0 + l * side), round(y0 + t * side), round(x0 + r * side), round(y0 + b * side))


def _detect(models: FaceModels, img: np.ndarray) -> Any | None:
    """The largest face box the detector finds in a work-size image, or None."""
    found = models.detector(img, 0)
    rects = [f.rect for f in found] if models.detector_name == "mmod" else list(found)
    return max(rects, key=lambda r: r.area()) if rects else None


# -- descriptors -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceDescriptors:
    """Per image: its descriptor, and whether the detector found a face (None when it did not run)."""

    descriptors: np.ndarray            # float32 (N, 128)
    detected: np.ndarray | None        # bool (N,) with align="detect"; None with align="box"

    @property
    def detection_rate(self) -> float:
        if self.detected is None:
            raise ValueError("detection_rate: the descriptors were computed with align='box' (no detector ran)")
        return float(self.detected.mean()) if self.detected.size else float("nan")


def _check_align(align: str, detect: bool | None) -> bool:
    if align not in ("box", "detect"):
        raise ValueError(f"align: expected 'box' or 'detect', got {align!r}")
    if align == "detect" and detect is False:
        raise ValueError("detect=False contradicts align='detect' (the box comes from the detector)")
    return align == "detect" if detect is None else detect


def face_chips(images: Tensor | np.ndarray | Sequence[np.ndarray], *, align: Align = "box",
               detect: bool | None = None, models: FaceModels | None = None
               ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Aligned 150x150 uint8 chips, one per image, and (when the detector ran) the detected flags.

    align="box": landmarks in FACE_BOX; align="detect": in the detector's box, FACE_BOX where it
    finds none. `detect` (default: align == "detect") runs the detector for the flags alone, so
    align="box", detect=True aligns every image the same way and still says where a face was found.
    """
    run_detector = _check_align(align, detect)
    models = models or load_face_models()
    dlib = _import_dlib()
    chips: list[np.ndarray] = []
    detected: list[bool] = []
    for img in as_face_images(images):
        work = _work_image(img)
        rect = _detect(models, work) if run_detector else None
        detected.append(rect is not None)
        if rect is None or align == "box":
            rect = _fixed_box(dlib, *work.shape[:2])
        shape = models.landmarks(work, rect)
        chips.append(dlib.get_face_chip(work, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
    return chips, (np.asarray(detected, dtype=bool) if run_detector else None)


def descriptors_of_chips(chips: Sequence[np.ndarray], *, models: FaceModels | None = None,
                         batch_size: int = 64) -> np.ndarray:
    """float32 (N, 128) descriptors of aligned 150x150 chips, `batch_size` chips per dlib call."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size: expected an integer in [1, {MAX_BATCH}], got {batch_size!r}")
    models = models or load_face_models()
    out = np.empty((len(chips), DESCRIPTOR_DIM), dtype=np.float32)
    for i in range(0, len(chips), batch_size):
        batch = list(chips[i:i + batch_size])
        out[i:i + len(batch)] = np.asarray(models.descriptor.compute_face_descriptor(batch), dtype=np.float32)
    return out


def describe_faces(images: Tensor | np.ndarray | Sequence[np.ndarray], *, align: Align = "box",
                   detect: bool | None = None, batch_size: int = 64,
                   models: FaceModels | None = None) -> FaceDescriptors:
    """Descriptors of every image, and whether a face was detected in it (align="detect", or detect=True).

    An image with no detectable face is never an error: its descriptor comes from FACE_BOX and
    its `detected` flag is False, so a caller reports it per image.
    """
    models = models or load_face_models()
    chips, detected = face_chips(images, align=align, detect=detect, models=models)
    return FaceDescriptors(descriptors=descriptors_of_chips(chips, models=models, batch_size=batch_size),
                           detected=detected)


def face_descriptors(images: Tensor | np.ndarray | Sequence[np.ndarray], *, align: Align = "box",
                     batch_size: int = 64, models: FaceModels | None = None) -> np.ndarray:
    """float32 (N, 128) dlib face descriptors of the images (see the module docstring for the path)."""
    return describe_faces(images, align=align, batch_size=batch_size, models=models).descriptors


def detect_faces(images: Tensor | np.ndarray | Sequence[np.ndarray], *, detector: Detector = "hog",
                 models: FaceModels | None = None) -> np.ndarray:
    """bool (N,): whether dlib's detector ("hog": frontal HOG + SVM; "mmod": the CNN) finds a face
    in each image, at the same work size the descriptors use."""
    models = models or load_face_models(detector=detector)
    return np.asarray([_detect(models, _work_image(img)) is not None for img in as_face_images(images)], dtype=bool)


def face_distance(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray:
    """Euclidean distance between descriptors row by row ((N, 128) and (N, 128) or (128,)); under
    SAME_PERSON_THRESHOLD is dlib's "same person"."""
    a_ = np.asarray(a, dtype=np.float32)
    b_ = np.asarray(b, dtype=np.float32)
    if a_.shape[-1] != DESCRIPTOR_DIM or b_.shape[-1] != DESCRIPTOR_DIM:
        raise ValueError(f"face_distance: expected descriptors of {DESCRIPTOR_DIM} values, got shapes "
                         f"{a_.shape} and {b_.shape}")
    return np.linalg.norm(a_ - b_, axis=-1)


def pairwise_face_distances(a: np.ndarray | Tensor, b: np.ndarray | Tensor | None = None) -> np.ndarray:
    """(N, M) distances between every row of `a` and every row of `b` (default: `a` itself)."""
    a_ = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b_ = a_ if b is None else torch.as_tensor(np.asarray(b, dtype=np.float32))
    return torch.cdist(a_.double(), b_.double()).float().numpy()


def same_person(a: np.ndarray | Tensor, b: np.ndarray | Tensor, *,
                threshold: float = SAME_PERSON_THRESHOLD) -> np.ndarray:
    """bool: face_distance(a, b) < threshold."""
    return face_distance(a, b) < threshold


class FaceFeatures(FeatureExtractor):
    """The "face" feature network for the metrics: dlib descriptors (B, 128), align="box".

    Metrics computed on it are suffixed `_face` (fid_face, kid_face, ...): distances in dlib's
    identity space, not comparable with Inception FIDs.
    """

    name = FACE_NAME

    def __init__(self, *, batch_size: int = 64, models_dir: str | Path | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.models = load_face_models(models_dir=models_dir)

    def _features(self, img_BCHW: Tensor) -> Tensor:
        return torch.from_numpy(face_descriptors(img_BCHW, batch_size=self.batch_size, models=self.models))

    def __getstate__(self) -> dict[str, Any]:
        # dlib objects do not pickle: a copy sent to a worker process loads the models there.
        state = self.__dict__.copy()
        state["models"] = None
        state["_models_dir"] = str(self.models.models_dir)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        models_dir = state.pop("_models_dir")
        self.__dict__.update(state)
        self.models = load_face_models(models_dir=models_dir)


def face_extractor(*, batch_size: int = 64, models_dir: str | Path | None = None) -> FaceFeatures:
    """The "face" FeatureExtractor (FaceModelError, one line, when dlib or the models are missing)."""
    return FaceFeatures(batch_size=batch_size, models_dir=models_dir)


# -- metrics on face descriptors ---------------------------------------------------------------

DIVERSITY_ROWS = 2000            # pairs among at most this many rows (a seeded subset): 2M distances


def identity_diversity(feats_N128: Tensor | np.ndarray, *, seed: int = 0,
                       max_rows: int = DIVERSITY_ROWS) -> dict[str, float]:
    """Mean descriptor distance over all pairs of a set (of a seeded subset of `max_rows` rows),
    and the share of pairs closer than SAME_PERSON_THRESHOLD: how many different people a set shows.

    A generator that draws the same few identities gives a low mean and a high same-person share
    next to the real set's own values, even when its FID looks fine.
    """
    x = torch.as_tensor(np.asarray(feats_N128, dtype=np.float32)).double()
    if x.ndim != 2 or x.shape[1] != DESCRIPTOR_DIM or x.shape[0] < 2:
        raise ValueError(f"identity_diversity: expected (N >= 2, {DESCRIPTOR_DIM}) descriptors, got {tuple(x.shape)}")
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    d = torch.cdist(x, x)
    upper = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
    return {"mean": float(upper.mean()), "same_share": float((upper < SAME_PERSON_THRESHOLD).double().mean())}


@register_metric("identity_diversity", needs=("fake_feats",), feature_based=True, features=(FACE_NAME,))
def _identity_diversity(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.fake_feats is not None
    seed = inputs.options.seed
    fake = identity_diversity(inputs.fake_feats, seed=seed)
    out = {"identity_diversity": fake["mean"], "identity_same_share": fake["same_share"]}
    if inputs.real_eval_feats is not None and inputs.real_eval_feats.shape[0] >= 2:
        real = identity_diversity(inputs.real_eval_feats, seed=seed)
        out.update(identity_diversity_real=real["mean"], identity_same_share_real=real["same_share"])
    return out


@register_metric("face_detection", needs=("fake_detected",), feature_based=False)
def _face_detection(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.fake_detected is not None
    out = {"face_detection_rate": float(inputs.fake_detected.float().mean())}
    if inputs.real_detected is not None and inputs.real_detected.numel():
        out["face_detection_rate_real"] = float(inputs.real_detected.float().mean())
    return out
