"""Attribute-controlled faces: control accuracy, the report's photo blend, and faces with set attributes.

    bundle = load_control_generator("runs/overlay_celeba64")   # overlay or conditional checkpoint
    faces = generate_faces(bundle, parse_attrs("Eyeglasses=1,Smiling=1,Male=0", bundle.attr_names), n=16)
    faces = blend_faces(bundle, load_classifier("runs/classifier"),
                        load_photos(["a.jpg", "b.png"], crop=bundle.crop, height=64, width=64), n=16)
    result = control_accuracy(lambda a: bundle.generate(bundle.latent(len(a), seed=0), a), classifier, requested_NA)

Control accuracy: for faces generated with requested attribute rows, the fraction whose
classifier-predicted attributes (probability > 0.5) equal the requested values, per attribute
and averaged over the attributes the classifier is scored on. It is compared with the rate of a
generator that ignores the request: an explicit unconditioned generator when given, otherwise
the same faces scored against the requests of other rows (a seeded permutation), i.e. a
generator with the same face distribution that does not listen. `lift` is the difference.

Attributes a request leaves unspecified take their train-split rate (a probability, the expected
value of the label), from the checkpoint meta (`attr_prevalence`) or counted from the shards.

CLI: `facegan blend` and `facegan generate` (facegan.cli.control). Benchmark: benchmarks/bench_control.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from facegan.config import ConfigError
from facegan.data.imageio import ImageError, load_and_prepare
from facegan.errors import CheckpointError, DataError
from facegan.families import FAMILIES
from facegan.families.classifier.scoring import attribute_probs
from facegan.families.loading import Generator, load_generator
from facegan.families.overlay import check_weight


# ============================================================================ requests

def parse_attrs(spec: str, attr_names: Sequence[str]) -> dict[str, int]:
    """"Eyeglasses=1,Smiling=1,Male=0" -> {"Eyeglasses": 1, "Smiling": 1, "Male": 0}.

    Names are matched exactly (CelebA spelling). Raises ConfigError for unknown names (listing
    the valid ones), values other than 0/1, repeated names and items without '='.
    """
    out: dict[str, int] = {}
    items = [item.strip() for item in spec.split(",") if item.strip()]
    unknown = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--attrs: expected NAME=0 or NAME=1, got {item!r}")
        name, value = (s.strip() for s in item.split("=", 1))
        if name not in attr_names:
            unknown.append(name)
            continue
        if value not in ("0", "1"):
            raise ConfigError(f"--attrs: {name} must be 0 or 1, got {value!r}")
        if name in out:
            raise ConfigError(f"--attrs: {name} is given more than once")
        out[name] = int(value)
    if unknown:
        raise ConfigError(f"--attrs: unknown attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(valid: {', '.join(attr_names)})")
    return out


def request_rows(requested: dict[str, int], *, attr_names: Sequence[str], prevalence_A: Tensor, n: int) -> Tensor:
    """n identical attribute rows: the requested values, the train-split rate elsewhere."""
    row_A = prevalence_A.detach().clone().float()
    for name, value in requested.items():
        row_A[list(attr_names).index(name)] = float(value)
    return row_A.expand(n, -1).clone()


def flip_requests(base_NA: Tensor, attr_idx: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(requests, counted mask): row i is base row i with attribute attr_idx[i % len] flipped, and
    only that flipped entry counts. Each attribute is asked, in turn, for the value opposite to the
    one its data row has: where a generator that ignores the request mostly fails."""
    req = (base_NA > 0.5).float().clone()
    mask = torch.zeros_like(req, dtype=torch.bool)
    rows = torch.arange(len(req))
    cols = torch.tensor(list(attr_idx))[rows % len(attr_idx)]
    req[rows, cols] = 1 - req[rows, cols]
    mask[rows, cols] = True
    return req, mask


# ============================================================================ control accuracy

@torch.no_grad()
def predict_attrs(classifier: nn.Module, img_BCHW: Tensor) -> Tensor:
    """Classifier predictions (bool B x A): probability > 0.5."""
    return attribute_probs(classifier, img_BCHW) > 0.5


@torch.no_grad()
def control_accuracy(generate: Callable[[Tensor], Tensor], classifier: nn.Module, requested_NA: Tensor, *,
                     attr_names: Sequence[str], scored: Sequence[str] | None = None, mask_NA: Tensor | None = None,
                     unconditioned: Callable[[Tensor], Tensor] | None = None, batch_size: int = 64,
                     seed: int = 0) -> dict[str, Any]:
    """Per-attribute and mean fraction of generated faces whose predicted attributes match the request.

    `generate(rows_BA) -> images` makes one face per requested row (0/1 values); `classifier`
    maps images in [-1, 1] to one logit per attribute of `attr_names`. `scored` (default: the
    classifier's `scored_attrs`, else all) are the attributes averaged; `mask_NA` (default: all)
    marks which requested entries count. `unconditioned(rows_BA) -> images` is a generator that
    ignores the rows; without it the baseline scores the same faces against a seeded permutation
    of the requests.
    """
    req = requested_NA.float()
    if not torch.all((req == 0) | (req == 1)):
        raise ValueError("control_accuracy: requested rows must be 0/1")
    if req.ndim != 2 or req.shape[1] != len(attr_names):
        raise ValueError(f"control_accuracy: expected requests of shape (N, {len(attr_names)}), got {tuple(req.shape)}")
    mask = torch.ones_like(req, dtype=torch.bool) if mask_NA is None else mask_NA.bool().cpu()
    scored = list(scored if scored is not None else getattr(classifier, "scored_attrs", None) or attr_names)
    bad = [a for a in scored if a not in attr_names]
    if bad:
        raise ValueError(f"control_accuracy: scored attributes {bad} are not among attr_names")

    def predictions(fn: Callable[[Tensor], Tensor]) -> Tensor:
        out = [predict_attrs(classifier, fn(req[i:i + batch_size])).cpu() for i in range(0, len(req), batch_size)]
        return torch.cat(out)

    pred = predictions(generate)
    want = req.bool().cpu()
    if unconditioned is not None:
        pred_u, baseline = predictions(unconditioned), "unconditioned generator"
    else:
        perm = torch.randperm(len(req), generator=torch.Generator().manual_seed(seed))
        pred_u, baseline = pred[perm], "requests shuffled across faces"

    def rates(p: Tensor) -> Tensor:
        hit = ((p == want) & mask).sum(0).double()
        return hit / mask.sum(0).clamp(min=1).double()

    ctrl_A, unc_A = rates(pred), rates(pred_u)
    counted_A = mask.sum(0)
    per_attr = {}
    for name in scored:
        j = list(attr_names).index(name)
        if counted_A[j] == 0:
            continue
        per_attr[name] = {"controlled": float(ctrl_A[j]), "unconditioned": float(unc_A[j]),
                          "lift": float(ctrl_A[j] - unc_A[j]), "num_requests": int(counted_A[j]),
                          "requested_rate": float((want[:, j] & mask[:, j]).sum() / counted_A[j])}
    if not per_attr:
        raise ValueError("control_accuracy: no requested entry counts for any scored attribute")
    idx = [list(attr_names).index(a) for a in per_attr]
    all_ok = ((pred == want) | ~mask)[:, idx].all(1).double().mean()
    all_ok_u = ((pred_u == want) | ~mask)[:, idx].all(1).double().mean()
    mean_c = float(np.mean([v["controlled"] for v in per_attr.values()]))
    mean_u = float(np.mean([v["unconditioned"] for v in per_attr.values()]))
    return {"num_faces": len(req), "baseline": baseline, "per_attr": per_attr, "mean_controlled": mean_c,
            "mean_unconditioned": mean_u, "mean_lift": mean_c - mean_u, "all_match_controlled": float(all_ok),
            "all_match_unconditioned": float(all_ok_u)}


def format_control(result: dict[str, Any], *, title: str = "") -> str:
    rows = [title] if title else []
    rows.append(f"{result['num_faces']} faces; baseline: {result['baseline']}")
    rows.append(f"{'attribute':<22} {'controlled':>10} {'baseline':>9} {'lift':>7} {'asked 1':>8}")
    for name, v in result["per_attr"].items():
        rows.append(f"{name:<22} {v['controlled']:10.3f} {v['unconditioned']:9.3f} {v['lift']:+7.3f} "
                    f"{v['requested_rate']:8.2f}")
    rows.append(f"{'mean':<22} {result['mean_controlled']:10.3f} {result['mean_unconditioned']:9.3f} "
                f"{result['mean_lift']:+7.3f}")
    rows.append(f"all attributes right: {result['all_match_controlled']:.3f} vs {result['all_match_unconditioned']:.3f}")
    return "\n".join(rows)


# ============================================================================ loading a generator

def load_control_generator(checkpoint: str | Path, *, ema: bool = True, alpha: float | None = None,
                           beta: float | None = None) -> Generator:
    """The generator of a checkpoint (or run folder) of a family whose G takes attributes (overlay,
    conditional): CPU, eval mode. `alpha`/`beta` replace the overlay's training values (ConfigError
    outside [0, 1], or for a family without them). Attribute names, their train rates and the crop
    come from the checkpoint meta, so no shard set is needed."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value is not None:
            check_weight(name, value)
    gen = load_generator(checkpoint, ema=ema)
    if not gen.family.takes_attrs:
        takes = sorted(name for name, f in FAMILIES.items() if f.takes_attrs)
        raise CheckpointError(f"{gen.checkpoint}: a {gen.family.name!r} checkpoint; attribute control needs a "
                              f"family whose generator takes attributes ({', '.join(takes)})")
    if not gen.attr_names:
        raise CheckpointError(f"{gen.checkpoint}: no attr_names in its meta")
    if alpha is None and beta is None:
        return gen
    if not hasattr(gen.cfg.gan, "alpha"):
        raise ConfigError(f"--alpha/--beta: only the overlay family has them; this is a {gen.family.name} checkpoint")
    return with_weights(gen, alpha=gen.cfg.gan.alpha if alpha is None else alpha,
                        beta=gen.cfg.gan.beta if beta is None else beta)


def with_weights(gen: Generator, *, alpha: float, beta: float) -> Generator:
    """The same overlay generator with other alpha/beta (for sweeps); validated like the config."""
    if not hasattr(gen.cfg.gan, "alpha"):
        raise ConfigError("alpha/beta: only the overlay family has them")
    cfg = dataclasses.replace(gen.cfg, gan=dataclasses.replace(gen.cfg.gan, alpha=alpha, beta=beta))
    run = dataclasses.replace(gen.run, cfg=cfg, steps=gen.family.build_steps(cfg, gen.run.data))
    return dataclasses.replace(gen, run=run)


# ============================================================================ photos and blends

def photo_crop(crop: str | tuple[int, int], *, src_w: int, src_h: int, height: int, width: int) -> str | tuple[int, int]:
    """The crop for a user photo of any size, following the shard recipe's crop.

    "square" stays; "none" (the sources were already framed at the output aspect, e.g. CelebA
    native) becomes the largest centred box of the output aspect; an (h, w) box is used as is
    when the photo holds it, else the largest centred box of its aspect.
    """
    if crop == "square":
        return crop
    aspect_h, aspect_w = (height, width) if crop == "none" else crop
    if crop != "none" and aspect_h <= src_h and aspect_w <= src_w:
        return crop
    scale = min(src_h / aspect_h, src_w / aspect_w)
    return max(1, int(aspect_h * scale)), max(1, int(aspect_w * scale))


def load_photos(paths: Sequence[str | Path], *, crop: str | tuple[int, int], height: int, width: int) -> Tensor:
    """Photos as float N x 3 x height x width in [-1, 1], cropped and resized as the shards were.

    Raises DataError naming every photo that cannot be read.
    """
    if not paths:
        raise DataError("no photos given")
    out, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                src_w, src_h = img.size
            box = photo_crop(crop, src_w=src_w, src_h=src_h, height=height, width=width)
            arr = load_and_prepare(str(path), crop=box, out_h=height, out_w=width)
        except (ImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad.append(f"{path} ({type(exc).__name__}: {exc})")
            continue
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    if bad:
        raise DataError(f"cannot read {len(bad)} of {len(paths)} photos: " + "; ".join(bad))
    return torch.stack(out).float().div(127.5).sub(1.0)


def check_classifier_fits(classifier: nn.Module, attr_names: Sequence[str], *, where: str) -> None:
    names = getattr(classifier, "attr_names", None)
    if names is not None and list(names) != list(attr_names):
        raise CheckpointError(f"{where}: the classifier's attributes ({len(names)}) are not the generator's "
                              f"({len(attr_names)}, from its shard set)")


@torch.no_grad()
def blend_attrs(classifier: nn.Module, photos_NCHW: Tensor) -> Tensor:
    """o_A: the classifier's attribute probabilities averaged over the photos (the report's o)."""
    return attribute_probs(classifier, photos_NCHW).mean(0)


@torch.no_grad()
def blend_faces(bundle: Generator, classifier: nn.Module, photos_NCHW: Tensor, *, n: int,
                seed: int = 0) -> tuple[Tensor, Tensor]:
    """(n faces, o_A): faces for the photos' averaged attributes, one fresh r per face."""
    check_classifier_fits(classifier, bundle.attr_names, where=getattr(classifier, "checkpoint", "classifier"))
    o_A = blend_attrs(classifier, photos_NCHW)
    return bundle.generate(bundle.latent(n, seed=seed), o_A.expand(n, -1)), o_A


@torch.no_grad()
def generate_faces(bundle: Generator, requested: dict[str, int], *, n: int, seed: int = 0) -> Tensor:
    """n faces with the requested attributes (others at their train-split rate)."""
    rows = request_rows(requested, attr_names=bundle.attr_names, prevalence_A=bundle.default_attrs(1)[0], n=n)
    return bundle.generate(bundle.latent(n, seed=seed), rows)
