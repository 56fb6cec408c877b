"""GAN inversion: the latent a frozen generator needs to redraw a real photo, and edits of it.

    gen = load_generator("runs/dcgan")                       # any family with a generator
    photos = load_photos(["a.jpg", "b.png"], crop=gen.crop, height=64, width=64)
    result = invert(gen, photos, InvertOptions(losses={"mse": 1.0, "ms_ssim": 1.0}))
    result.latent, result.images, result.scores              # per photo: mse, ssim, ms_ssim

G is frozen; the latent is optimised with Adam to reconstruct each photo (a batch of photos at
once; each photo's loss is its own, so the batch does not couple them). Losses, alone or weighted
together: `mse`, `ssim` (1 − SSIM), `ms_ssim` (1 − MS-SSIM, with the scales that fit the image
size, as facegan.metrics.diversity), and `vgg` (the report's perceptual loss: the first 23 layers
of VGG-16's feature extractor, i.e. through relu4_3, output flattened, squared L2 distance),
whose weights come from a local file (torchvision's `vgg16` state_dict; nothing is downloaded).

The start: the family's encoder where it has one (a VAE's mean, `Steps.encode`), else a latent
predictor (`predictor=`, seed 002's network mapping images to latents), else the best of K random
latents (`restarts`, scored by the same loss). Families whose G takes attribute rows are inverted
with the rows held fixed (`attrs`, default: the rows' training rates); their edits change the rows.

Attribute directions (`find_directions`): sample N latents, let the attribute classifier read the
faces, and take per attribute the mean latent of faces with it minus the mean of faces without
(`facegan directions`); an edit adds `scale x direction` to a photo's latent.

Identity (`identity_report`): dlib's face descriptor (facegan.metrics.face, the same path as the
`face` metrics) of each photo and of what was made from it; their distance, and whether it is
under dlib's same-person threshold (0.6). The photo's face is found by dlib's HOG detector (the
fixed aligned-crop box where it finds none); a photo with no detectable face is reported as such
and left out of the share rather than measured against a non-face.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facegan.errors import CheckpointError, ConfigError, FaceModelError
from facegan.families.loading import Generator
from facegan.metrics.face import SAME_PERSON_THRESHOLD

LOSSES = ("mse", "ssim", "ms_ssim", "vgg")
VGG_LAYERS = 23                    # vgg16.features[:23]: conv1_1 ... relu4_3
MAX_STEPS = 100_000
MAX_RESTARTS = 1024
DIRECTIONS_FILE = "directions.pt"


# ============================================================================ options

def parse_losses(spec: str) -> dict[str, float]:
    """"mse" / "mse,ms_ssim" / "mse=1,vgg=0.1" -> {name: weight}; ConfigError naming bad parts."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in LOSSES:
            raise ConfigError(f"--loss: unknown loss {name!r} (losses: {', '.join(LOSSES)})")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"--loss: {item!r}: the weight must be a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--loss: {item!r}: the weight must be > 0")
        if name in out:
            raise ConfigError(f"--loss: {name} is given more than once")
        out[name] = value
    if not out:
        raise ConfigError(f"--loss: expected one or more of {', '.join(LOSSES)}, got {spec!r}")
    return out


@dataclass(kw_only=True)
class InvertOptions:
    losses: dict[str, float] = field(default_factory=lambda: {"mse": 1.0})
    steps: int = 300                   # Adam steps on the latent
    lr: float = 0.05
    restarts: int = 8                  # K random starts (when there is no encoder or predictor)
    vgg_weights: str = ""              # torchvision vgg16 state_dict file, for the vgg loss
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.losses) - set(LOSSES))
        if unknown or not self.losses:
            raise ConfigError(f"losses: expected some of {', '.join(LOSSES)}, got {sorted(self.losses)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"--steps: expected 1..{MAX_STEPS}, got {self.steps}")
        if not 0 < self.lr < 10:
            raise ConfigError(f"--lr: expected 0 < lr < 10, got {self.lr}")
        if not 1 <= self.restarts <= MAX_RESTARTS:
            raise ConfigError(f"--restarts: expected 1..{MAX_RESTARTS}, got {self.restarts}")
        if "vgg" in self.losses:
            if not self.vgg_weights:
                raise ConfigError("--loss vgg needs --vgg-weights FILE: a local torchvision vgg16 state_dict "
                                  "(e.g. vgg16-397923af.pth); facegan downloads nothing. The mse, ssim and ms_ssim "
                                  "losses need no file")
            if not Path(self.vgg_weights).is_file():
                raise ConfigError(f"--vgg-weights: {self.vgg_weights} does not exist")


# ============================================================================ losses

class VGGFeatures(nn.Module):
    """The first 23 layers of VGG-16's feature extractor (through relu4_3), frozen; images in
    [-1, 1] are mapped to ImageNet normalisation first."""

    def __init__(self, state_dict: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        from torchvision.models import vgg16

        net = vgg16(weights=None)
        if state_dict is not None:
            try:
                net.load_state_dict(state_dict)
            except RuntimeError as exc:
                raise CheckpointError(f"not a torchvision vgg16 state_dict: {str(exc).splitlines()[0]}") from None
        self.features = net.features[:VGG_LAYERS].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, img_BCHW: Tensor) -> Tensor:
        x = ((img_BCHW + 1) / 2 - self.mean) / self.std
        return self.features(x).flatten(1)


def load_vgg(path: str | Path) -> VGGFeatures:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--vgg-weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not state dicts
        raise CheckpointError(f"{path}: cannot load with weights_only=True: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a torchvision vgg16 state_dict")
    try:
        return VGGFeatures(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=2.0, reduction="none")


def ms_ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    from facegan.metrics.diversity import ms_ssim_settings

    kernel, sigma, betas = ms_ssim_settings(height=a.shape[2], width=a.shape[3])
    return multiscale_structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=sigma, kernel_size=kernel,
                                                          reduction="none", data_range=2.0, betas=betas,
                                                          normalize="relu")


class ReconstructionLoss(nn.Module):
    """Weighted sum of the chosen losses, per image (B,): each photo's own loss."""

    def __init__(self, weights: dict[str, float], *, vgg: VGGFeatures | None = None) -> None:
        super().__init__()
        self.weights = dict(weights)
        if "vgg" in self.weights and vgg is None:
            raise ConfigError("the vgg loss needs VGG-16 weights (--vgg-weights)")
        self.vgg = vgg

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        total = fake.new_zeros(fake.shape[0])
        for name, w in self.weights.items():
            if name == "mse":
                term = (fake - real).pow(2).flatten(1).mean(1)
            elif name == "ssim":
                term = 1 - ssim_per_image(fake, real)
            elif name == "ms_ssim":
                term = 1 - ms_ssim_per_image(fake, real)
            else:
                assert self.vgg is not None
                term = (self.vgg(fake) - self.vgg(real)).pow(2).mean(1)
            total = total + w * term
        return total


@torch.no_grad()
def scores(fake: Tensor, real: Tensor) -> list[dict[str, float]]:
    """Per image: MSE, SSIM and MS-SSIM of the reconstruction (images in [-1, 1])."""
    fake, real = fake.float().clamp(-1, 1), real.float()
    mse = (fake - real).pow(2).flatten(1).mean(1)
    ssim = ssim_per_image(fake, real)
    ms = ms_ssim_per_image(fake, real)
    return [{"mse": float(a), "ssim": float(b), "ms_ssim": float(c)} for a, b, c in zip(mse, ssim, ms)]


# ============================================================================ inversion

@dataclass
class Inversion:
    latent: Tensor                 # (N, latent_dim)
    start: Tensor                  # the starting latents
    start_images: Tensor           # G(start), [-1, 1]
    images: Tensor                 # G(latent)
    scores: list[dict[str, float]]
    start_kind: str                # "encoder" | "predictor" | "best of K random"
    attrs: Tensor | None = None


def _generate(gen: Generator, latent: Tensor, attrs: Tensor | None) -> Tensor:
    return gen.steps.generate(gen.G, latent, attrs)


def invert(gen: Generator, photos: Tensor, options: InvertOptions, *, attrs: Tensor | None = None,
           predictor: Callable[[Tensor], Tensor] | None = None, indices: list[int] | None = None,
           progress: Callable[[int, float], None] | None = None) -> Inversion:
    """Latents reconstructing `photos` (N x 3 x H x W in [-1, 1], already cropped and resized as the
    generator's shards were) with G frozen. Photo i's random starts are seeded by (seed, indices[i])
    and Adam acts on each latent separately, so a photo's result does not depend on which other
    photos share its batch (Ray workers split them freely)."""
    h, w = gen.resolution
    if photos.ndim != 4 or tuple(photos.shape[1:]) != (3, h, w):
        raise ConfigError(f"photos must be N x 3 x {h} x {w} (the generator's size), got {tuple(photos.shape)}")
    if gen.family.takes_attrs and attrs is None:
        attrs = gen.default_attrs(photos.shape[0])
    vgg = load_vgg(options.vgg_weights) if "vgg" in options.losses else None
    loss_fn = ReconstructionLoss(options.losses, vgg=vgg)
    gen.G.eval().requires_grad_(False)
    n = photos.shape[0]
    indices = list(range(n)) if indices is None else list(indices)

    with torch.no_grad():
        start = gen.steps.encode(gen.run.nets, photos)
        kind = "encoder"
        if start is None and predictor is not None:
            start, kind = predictor(photos), "predictor"
        if start is None:
            # Best of K random latents per photo, by the same loss.
            kind = f"best of {options.restarts} random"
            best = torch.full((n,), float("inf"))
            start = torch.empty(n, gen.latent_dim)
            gens = [torch.Generator().manual_seed(options.seed * 1_000_003 + i) for i in indices]
            for _ in range(options.restarts):
                cand = torch.cat([gen.steps.latent(1, generator=g) for g in gens])
                loss = loss_fn(_generate(gen, cand, attrs), photos)
                better = loss < best
                start[better], best[better] = cand[better], loss[better]
        start = gen.steps.project_latent(start.float())
        start_images = _generate(gen, start, attrs)

    latent = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=options.lr)
    for i in range(options.steps):
        loss = loss_fn(_generate(gen, latent, attrs), photos)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()            # per-photo losses: summing keeps each photo's gradient its own
        opt.step()
        with torch.no_grad():
            latent.copy_(gen.steps.project_latent(latent))
        if progress is not None:
            progress(i + 1, float(loss.detach().mean()))
    latent = latent.detach()
    with torch.no_grad():
        images = _generate(gen, latent, attrs)
    return Inversion(latent=latent, start=start, start_images=start_images, images=images,
                     scores=scores(images, photos), start_kind=kind, attrs=attrs)


# ============================================================================ identity

@dataclass(frozen=True)
class FaceCheck:
    """dlib descriptors of source photos and of the faces made from them (facegan.metrics.face)."""

    threshold: float = SAME_PERSON_THRESHOLD      # dlib's same-person distance (0.6)
    batch_size: int = 64

    def describe(self, images: Tensor) -> tuple[Any, Any]:
        """(descriptors (N, 128) float32, detected (N,) bool) of images in [-1, 1]."""
        from facegan.metrics.face import describe_faces

        found = describe_faces(images.float().clamp(-1, 1), align="detect", batch_size=self.batch_size)
        return found.descriptors, found.detected

    def distances(self, photos: Tensor, faces: Tensor, *, per_photo: int = 1) -> tuple[list[list[float]], list[bool]]:
        """Per photo: the descriptor distance to each of its `per_photo` faces (faces are photo-major:
        photo 0's first, then photo 1's ...), and whether a face was detected in the photo."""
        import numpy as np

        from facegan.metrics.face import face_distance

        if faces.shape[0] != photos.shape[0] * per_photo:
            raise ValueError(f"distances: {faces.shape[0]} faces for {photos.shape[0]} photos x {per_photo}")
        both, detected = self.describe(torch.cat([photos, faces]))
        src, made = both[:photos.shape[0]], both[photos.shape[0]:]
        dist = face_distance(np.repeat(src, per_photo, axis=0), made).reshape(photos.shape[0], per_photo)
        return [[float(d) for d in row] for row in dist], [bool(x) for x in detected[:photos.shape[0]]]


def face_check_or_none(enabled: bool = True, *, threshold: float = SAME_PERSON_THRESHOLD) -> tuple[FaceCheck | None, str]:
    """A FaceCheck where dlib and its models load, else None and the one line saying why."""
    if not enabled:
        return None, "identity not measured (--no-identity)"
    from facegan.metrics.face import load_face_models

    try:
        load_face_models()
    except FaceModelError as exc:
        return None, f"identity not measured: {exc}"
    return FaceCheck(threshold=threshold), ""


def identity_report(check: FaceCheck, photos: Tensor, outputs: dict[str, Tensor]) -> dict[str, Any]:
    """Per photo, the descriptor distance photo -> each output (name -> N images in photo order) and
    whether it is the same person; per output, the share of photos under the threshold (photos with
    no detectable face left out and counted)."""
    names = list(outputs)
    faces = torch.stack([outputs[k] for k in names], dim=1).flatten(0, 1)       # photo-major
    dist, detected = check.distances(photos, faces, per_photo=len(names))
    per_photo = []
    for row, found in zip(dist, detected):
        if not found:
            per_photo.append({"face_detected": False, "identity_distance": {k: None for k in names},
                              "same_person": {k: None for k in names}})
            continue
        per_photo.append({"face_detected": True, "identity_distance": {k: round(d, 4) for k, d in zip(names, row)},
                          "same_person": {k: d < check.threshold for k, d in zip(names, row)}})
    measured = [i for i, found in enumerate(detected) if found]
    summary: dict[str, Any] = {"threshold": check.threshold, "photos_measured": len(measured),
                               "photos_without_face": len(detected) - len(measured), "outputs": {}}
    for j, name in enumerate(names):
        ds = [dist[i][j] for i in measured]
        summary["outputs"][name] = {
            "mean_distance": round(sum(ds) / len(ds), 4) if ds else None,
            "same_person_share": round(sum(d < check.threshold for d in ds) / len(ds), 4) if ds else None}
    return {"per_photo": per_photo, "summary": summary}


def format_identity(summary: dict[str, Any]) -> str:
    """One line per output: mean distance and same-person share."""
    lines = []
    for name, row in summary["outputs"].items():
        if row["mean_distance"] is None:
            lines.append(f"  identity {name}: not measured (no detectable face in any photo)")
        else:
            lines.append(f"  identity {name}: mean dlib distance {row['mean_distance']:.3f}, "
                         f"{100 * row['same_person_share']:.0f}% same person (< {summary['threshold']:g})")
    if summary["photos_without_face"]:
        lines.append(f"  {summary['photos_without_face']} photo(s) with no detectable face: identity not measured "
                     "for them (listed per photo)")
    return "\n".join(lines)


# ============================================================================ directions and edits

@torch.no_grad()
def find_directions(gen: Generator, classifier: nn.Module, *, num_samples: int = 5000, seed: int = 0,
                    batch_size: int = 250, min_count: int = 10) -> dict[str, Any]:
    """Per attribute the classifier scores: mean latent of generated faces with the attribute
    (probability > 0.5) minus the mean of faces without. Attributes with fewer than `min_count`
    faces on either side are left out (listed in "skipped")."""
    from facegan.families.classifier.scoring import attribute_probs

    if num_samples < 2 * min_count:
        raise ConfigError(f"--num-samples: expected at least {2 * min_count}, got {num_samples}")
    names = list(getattr(classifier, "attr_names", []))
    scored = list(getattr(classifier, "scored_attrs", names))
    generator = torch.Generator().manual_seed(seed)
    sums_pos = torch.zeros(len(names), gen.latent_dim, dtype=torch.float64)
    sums_all = torch.zeros(gen.latent_dim, dtype=torch.float64)
    count_pos = torch.zeros(len(names), dtype=torch.float64)
    for i in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - i)
        latent = gen.steps.latent(b, generator=generator)
        has_BA = (attribute_probs(classifier, gen.generate(latent)) > 0.5).double()
        lat = latent.double()
        sums_pos += has_BA.T @ lat
        sums_all += lat.sum(0)
        count_pos += has_BA.sum(0)
    directions: dict[str, Tensor] = {}
    counts, skipped = {}, []
    for j, name in enumerate(names):
        if name not in scored:
            continue
        pos, neg = count_pos[j], num_samples - count_pos[j]
        if pos < min_count or neg < min_count:
            skipped.append(name)
            continue
        mean_pos = sums_pos[j] / pos
        mean_neg = (sums_all - sums_pos[j]) / neg
        directions[name] = (mean_pos - mean_neg).float()
        counts[name] = [int(pos), int(neg)]
    if not directions:
        raise ConfigError(f"no scored attribute had {min_count} or more of {num_samples} generated faces on each "
                          "side (with and without it); draw more (--num-samples) or use a better trained "
                          "generator or classifier")
    return {"directions": directions, "counts": counts, "skipped": skipped, "num_samples": num_samples,
            "classifier": str(getattr(classifier, "checkpoint", "")), "latent_dim": gen.latent_dim}


def save_directions(found: dict[str, Any], checkpoint: str | Path) -> Path:
    """Next to the checkpoint: directions.pt (tensors) and directions.json (what they came from)."""
    folder = Path(checkpoint)
    torch.save({name: d for name, d in found["directions"].items()}, folder / DIRECTIONS_FILE)
    meta = {k: v for k, v in found.items() if k != "directions"}
    meta["attrs"] = sorted(found["directions"])
    (folder / "directions.json").write_text(json.dumps(meta, indent=1))
    return folder / DIRECTIONS_FILE


def load_directions(checkpoint: str | Path) -> dict[str, Tensor]:
    path = Path(checkpoint) / DIRECTIONS_FILE
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no attribute directions stored with it; run `facegan directions "
                          f"--checkpoint {checkpoint} --classifier CLASSIFIER` first")
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class Edit:
    """One edit of an inverted photo: a name for the grid and the change it makes."""

    name: str
    codes: dict[str, float] = field(default_factory=dict)        # InfoGAN codes: cat, c1, c2, ...
    attrs: dict[str, float] = field(default_factory=dict)        # families that take attribute rows
    directions: dict[str, float] = field(default_factory=dict)   # latent directions: name -> scale

    def target_attrs(self) -> dict[str, float]:
        """The attribute values this edit asks for (for shard labels of augmented faces)."""
        out = dict(self.attrs)
        out.update({k: 1.0 if v > 0 else 0.0 for k, v in self.directions.items()})
        return out


def apply_edit(gen: Generator, latent: Tensor, attrs: Tensor | None, edit: Edit, *,
               directions: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """(latent, attrs) after `edit`; ConfigError for what the family cannot change."""
    latent = latent.clone()
    if edit.codes:
        if not gen.family.latent_codes:
            raise ConfigError(f"--set: a {gen.family.name} generator has no latent codes (InfoGAN and InfoBEGAN do)")
        gen.steps.check_codes(edit.codes)
        latent = gen.steps.set_codes(latent, edit.codes)
    if edit.attrs:
        if not gen.family.takes_attrs or attrs is None:
            raise ConfigError(f"--attrs: a {gen.family.name} generator does not take attributes "
                              "(overlay and conditional do); use --direction NAME=SCALE instead")
        attrs = attrs.clone()
        for name, value in edit.attrs.items():
            attrs[:, gen.attr_names.index(name)] = float(value)
    if edit.directions:
        if directions is None:
            raise ConfigError("--direction: no attribute directions loaded")
        for name, scale in edit.directions.items():
            if name not in directions:
                raise ConfigError(f"--direction: no direction for {name!r} (stored: {', '.join(sorted(directions))})")
            latent = latent + scale * directions[name].to(latent)
        latent = gen.steps.project_latent(latent)
    return latent, attrs


def parse_edit(*, sets: list[str], attrs: str, directions: list[str], gen: Generator) -> Edit:
    """One Edit from CLI values: --set k=v (codes), --attrs A=0|1,..., --direction NAME=SCALE."""
    from facegan.control import parse_attrs

    codes: dict[str, float] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set: expected CODE=VALUE (e.g. cat=3, c1=0.8), got {item!r}")
        try:
            codes[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--set {item}: the value must be a number") from None
    if codes:
        if not gen.family.latent_codes:
            raise ConfigError(f"--set: a {gen.family.name} generator has no latent codes (InfoGAN and InfoBEGAN do)")
        gen.steps.check_codes(codes)
    if attrs and not gen.family.takes_attrs:
        raise ConfigError(f"--attrs: a {gen.family.name} generator does not take attributes (overlay and conditional "
                          "do); use --direction NAME=SCALE instead")
    attr_values = {k: float(v) for k, v in parse_attrs(attrs, gen.attr_names).items()} if attrs else {}
    dirs: dict[str, float] = {}
    for item in directions:
        key, eq, value = item.partition("=")
        try:
            dirs[key.strip()] = float(value) if eq else 1.0
        except ValueError:
            raise ConfigError(f"--direction {item}: the scale must be a number") from None
    parts = [f"{k}={v:g}" for k, v in {**codes, **attr_values}.items()] + [f"{k}{v:+g}" for k, v in dirs.items()]
    return Edit(name=",".join(parts) or "reconstruction", codes=codes, attrs=attr_values, directions=dirs)


def load_predictor_fn(path: str | Path | None, *, gen: Generator | None = None) -> Callable[[Tensor], Tensor] | None:
    """A latent predictor's images -> latents function (seed 002's network, `facegan predictor
    train`), from its checkpoint or run folder. None for an empty path. With `gen`, the predictor
    must have been trained for a latent of that generator's size."""
    if not path:
        return None
    from facegan.families.predictor.load import load_predictor

    P = load_predictor(path)
    if gen is not None:
        probe = P(torch.zeros(1, 3, *gen.resolution))
        if probe.shape[1] != gen.latent_dim:
            raise ConfigError(f"--predictor: {path} predicts {probe.shape[1]}-d latents; {gen.checkpoint} takes "
                              f"{gen.latent_dim}-d ones (train it with `facegan predictor train --checkpoint` on this run)")

    @torch.no_grad()
    def predict(img: Tensor) -> Tensor:
        return P(img)

    return predict
