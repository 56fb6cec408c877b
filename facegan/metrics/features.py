"""Feature networks for the evaluation metrics, and feature extraction from shards, folders, tensors.

    inception = load_inception("/models/pt_inception-2015-12-05-6726825d.pth")   # metrics: fid, kid, ...
    attr = attr_extractor(checkpoint="runs/classifier/checkpoint")               # metrics: fid_attr, ...
    real_NF = shard_features(inception, shards_dir="/data/shards/celeba64", split="val", max_images=10_000)
    fake_NF = extract_features(inception, G(torch.randn(10_000, 100)), batch_size=100)

A FeatureExtractor takes uint8 images in [0, 255] or float images in [-1, 1] (BCHW) and returns
float32 feature vectors, deterministically and without gradients. Its `name` is the suffix of the
metrics computed with it: Inception features give the standard `fid`, anything else `fid_<name>`,
so a number from the face-attribute classifier is never mistaken for a comparable FID.

Nothing here downloads weights: the Inception network is built from a local file or not at all.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k "inception or features"
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.errors import InceptionWeightsError  # noqa: F401  (re-exported)
from facegan.images import as_float_images, as_uint8_images  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

INCEPTION_NAME = "inception"
INCEPTION_SIZE = 299
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# torchvision's ImageNet normalisation, which its Inception-v3 expects (it maps it back to [-1, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHTS_HELP = ("pass --inception-weights with a local Inception-v3 state_dict: the FID weights "
                 "pt_inception-2015-12-05-6726825d.pth (as used by pytorch-fid / torch-fidelity) or a "
                 "torchvision inception_v3 state_dict; nothing is downloaded")




class FeatureExtractor(nn.Module):
    """Images (uint8 or float [-1, 1], BCHW) -> float32 features (B, F); frozen, eval mode, no grad."""

    name: str = ""

    def _features(self, img_BCHW: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, img_BCHW: Tensor) -> Tensor:
        feats = self._features(img_BCHW)
        return feats.reshape(feats.shape[0], -1).to(torch.float32)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Batch norm in training mode would make a sample's features depend on its batch.
        return super().train(False)


class AttrFeatures(FeatureExtractor):
    """Penultimate features of the CelebA attribute classifier (its `.features(img)` in [-1, 1])."""

    name = "attr"

    def __init__(self, *, classifier: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(classifier, "features", None)):
            raise TypeError(f"classifier: expected a module with a .features(img) method, got {type(classifier).__name__}")
        self.classifier = classifier.eval().requires_grad_(False)

    def _features(self, img_BCHW: Tensor) -> Tensor:
        return self.classifier.features(as_float_images(img_BCHW))


def attr_extractor(*, checkpoint: str | Path | None = None, classifier: nn.Module | None = None) -> AttrFeatures:
    """The "attr" feature network, from a classifier checkpoint or an already loaded classifier."""
    if (checkpoint is None) == (classifier is None):
        raise ValueError("attr_extractor: pass exactly one of checkpoint= or classifier=")
    if checkpoint is not None:
        # Imported here so the metrics import without the classifier package being present.
        from facegan.families.classifier.scoring import load_classifier

        classifier = load_classifier(checkpoint)
    assert classifier is not None
    return AttrFeatures(classifier=classifier)


class TorchvisionInceptionFeatures(FeatureExtractor):
    """2048-d pool features of torchvision's Inception-v3 (bilinear resize to 299, ImageNet normalisation)."""

    name = INCEPTION_NAME

    def __init__(self, *, state_dict: Mapping[str, Tensor]) -> None:
        super().__init__()
        import torchvision

        # transform_input=True is how torchvision runs its ImageNet weights: it undoes the ImageNet
        # normalisation into the [-1, 1] range the original Google network was trained on.
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        net.load_state_dict(state_dict, strict=True)
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, img_BCHW: Tensor) -> Tensor:
        x = as_float_images(img_BCHW).add(1.0).mul(0.5)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
        return self.net((x - self.mean) / self.std)


class FidInceptionFeatures(FeatureExtractor):
    """2048-d pool features of the TF-ported FID Inception (torch-fidelity's network: FID-compatible)."""

    name = INCEPTION_NAME

    def __init__(self, *, path: Path) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # A path is always given: with None, torch-fidelity would download its weights. The file
        # was already read with weights_only=True by load_inception, so torch-fidelity's own
        # (unrestricted) torch.load of it unpickles nothing but tensors.
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))

    def _features(self, img_BCHW: Tensor) -> Tensor:
        # torch-fidelity resizes to 299 the way TF1 did, from uint8 pixels, as the reference FID does.
        (feats,) = self.net(as_uint8_images(img_BCHW))
        return feats


def _inception_keys(*, fid: bool) -> dict[str, torch.Size]:
    import torchvision

    net = (torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
           if fid else torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False))
    return {k: v.shape for k, v in net.state_dict().items()}


def _check_keys(path: Path, state: Mapping[str, Tensor], expected: dict[str, torch.Size], what: str) -> None:
    # Files saved before PyTorch 0.4.1 have no BN step counters; load_state_dict fills them in.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(s)})" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} expected keys missing, e.g. {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:4])}")
        if wrong:
            parts.append(f"{len(wrong)} keys of the wrong shape, e.g. {'; '.join(wrong[:3])}")
        raise InceptionWeightsError(f"{path}: not a valid {what}: {'; '.join(parts)}")


def check_weights_file(path: str | Path) -> Path:
    """The weights file as a Path; InceptionWeightsError when it is missing or empty (checked before
    any work starts; load_inception reads it)."""
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"inception weights file not found: {path} ({_WEIGHTS_HELP})")
    if path.stat().st_size == 0:
        raise InceptionWeightsError(f"{path}: the file is empty (0 bytes); {_WEIGHTS_HELP}")
    return path


def load_inception(path: str | Path) -> FeatureExtractor:
    """The "inception" feature network from a local weights file, whichever of the two formats it is.

    * the FID weights pt_inception-2015-12-05-6726825d.pth (TF-ported, `fc` of 1008 classes): run
      through torch-fidelity's FID Inception, so numbers compare with published FIDs;
    * a torchvision `inception_v3` state_dict (with `AuxLogits.*`, `fc` of 1000 classes).

    Raises InceptionWeightsError naming the file when it is missing or neither format.
    """
    path = check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise InceptionWeightsError(f"{path}: cannot be read as a PyTorch state_dict "
                                    f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); {_WEIGHTS_HELP}"
                                    ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                                    f"got {type(state).__name__}; {_WEIGHTS_HELP}")
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.ndim == 2 else None
    if num_classes == 1008 and not any(k.startswith("AuxLogits.") for k in state):
        _check_keys(path, state, _inception_keys(fid=True), "FID Inception state_dict (pt_inception-2015-12-05)")
        return FidInceptionFeatures(path=path)
    expected = _inception_keys(fid=False)
    if num_classes == 1000 or any(k.startswith("AuxLogits.") for k in state):
        _check_keys(path, state, expected, "torchvision inception_v3 state_dict")
        return TorchvisionInceptionFeatures(state_dict=state)
    missing = [k for k in expected if k not in state]
    raise InceptionWeightsError(
        f"{path}: not an Inception-v3 state_dict: expected the FID weights (fc.weight of 1008 classes) or a "
        f"torchvision inception_v3 state_dict (fc.weight of 1000 classes, AuxLogits.*); "
        f"{len(missing)} of {len(expected)} torchvision keys missing, e.g. {', '.join(missing[:4])}")


# -- extraction --------------------------------------------------------------------------------

def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    else:
        yield from images


def extract_features(extractor: FeatureExtractor, images: Tensor | Iterable[Tensor], *,
                     batch_size: int = 64) -> Tensor:
    """Features (N, F) float32 of an image tensor (cut into `batch_size` batches) or of an iterable of batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    extractor.eval()
    feats = [extractor(batch) for batch in _batches(images, batch_size) if batch.shape[0]]
    if not feats:
        raise ValueError(f"no images to extract {extractor.name} features from")
    return torch.cat(feats)


def shard_images(*, shards_dir: str | Path, split: str, max_images: int | None = None, batch_size: int = 64,
                 rank: int = 0, world_size: int = 1) -> Iterator[Tensor]:
    """uint8 BCHW batches of this rank's share of a shard split, at most `max_images` of them in all.

    Each sample of the split appears once over all ranks (see facegan.data.stream), so features
    can be extracted on Ray workers and the (N, F) matrices concatenated before the statistics.
    """
    from facegan.data.stream import ShardSet, eval_loader

    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images: expected a positive integer or None, got {max_images}")
    shard_set = ShardSet.open(str(shards_dir))
    left = max_images
    skipped = 0
    for batch in eval_loader(shard_set, split=split, batch_size=batch_size, rank=rank, world_size=world_size,
                             normalize=False):
        skipped += batch["num_skipped"]
        img = batch["image"] if left is None else batch["image"][:left]
        yield img
        if left is not None:
            left -= img.shape[0]
            if left <= 0:
                break
    if skipped:
        log.warning("%s split %r: skipped %d damaged samples", shards_dir, split, skipped)


def shard_features(extractor: FeatureExtractor, *, shards_dir: str | Path, split: str,
                   max_images: int | None = None, batch_size: int = 64, rank: int = 0,
                   world_size: int = 1) -> Tensor:
    """Features (N, F) of up to `max_images` images of a shard split (this rank's share)."""
    return extract_features(extractor, shard_images(shards_dir=shards_dir, split=split, max_images=max_images,
                                                    batch_size=batch_size, rank=rank, world_size=world_size))


def load_shard_images(*, shards_dir: str | Path, split: str, max_images: int | None = None) -> Tensor:
    """Up to `max_images` images of a shard split as one uint8 (N, 3, H, W) tensor."""
    return torch.cat(list(shard_images(shards_dir=shards_dir, split=split, max_images=max_images)))


@dataclass(frozen=True)
class FolderImages:
    """Images read from a folder: uint8 (N, 3, H, W), the files they came from, and the files skipped."""

    images: Tensor
    paths: list[str]
    skipped: list[tuple[str, str]]   # (file, why)


def read_image_folder(directory: str | Path, *, height: int, width: int, max_images: int | None = None,
                      strict: bool = False) -> FolderImages:
    """The .png/.jpg/.jpeg files directly in `directory`, centre-cropped square and resized to (height, width).

    Crop and resize are the shard builder's (`load_and_prepare`), so images of any size are
    compared with shards on equal terms. An unreadable file is skipped, logged and counted, or
    with `strict` raises; a folder with no readable image raises, naming the files that failed.
    """
    from facegan.data.imageio import ImageError, load_and_prepare
    from facegan.data.records import DataError

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"image folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{directory}: no {'/'.join(IMAGE_SUFFIXES)} files")
    imgs: list[np.ndarray] = []
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path in files:
        if max_images is not None and len(imgs) >= max_images:
            break
        try:
            imgs.append(load_and_prepare(str(path), crop="square", out_h=height, out_w=width))
        except ImageError as exc:
            if strict:
                raise ImageError(f"{path}: {exc}") from None
            log.warning("skipping unreadable image %s: %s", path, exc)
            skipped.append((str(path), str(exc)))
            continue
        paths.append(str(path))
    if not imgs:
        listed = "; ".join(f"{p}: {why}" for p, why in skipped[:5])
        raise DataError(f"{directory}: none of {len(files)} image files could be read ({listed})")
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return FolderImages(images=images, paths=paths, skipped=skipped)
