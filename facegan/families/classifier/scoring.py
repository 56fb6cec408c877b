"""Scoring face-attribute classifiers: the majority baseline, per-split accuracy, tables, loading.

    model = load_classifier("runs/classifier_celeba64")      # CPU, eval mode, weights_only load
    result = evaluate_classifier(model, "data/celeba64", "test")
    print(format_table(result))
    o_BA = attribute_probs(model, img_BCHW)                    # probabilities, 0..1

Which attributes count. Shard sets store all their attributes for every face, also those the
source does not really label: synthetic faces draw 11 CelebA attributes and fix the other 29 to
one value. An attribute whose train-split labels never change carries no information (a
classifier and the majority baseline both score 100% on it and would inflate every mean), so by
default only attributes whose train labels take both values are trained (the BCE is masked to
them) and scored; `model.attrs` names them explicitly instead. The net still has one logit per
attribute of the shard set, so its outputs line up with `ShardSet.attr_names`.

The majority baseline predicts, for each attribute, the value most train-split faces have (ties:
0). CelebA's attributes are imbalanced (e.g. 95% wear no eyeglasses), so accuracy means little
without it: every evaluation reports accuracy, baseline and their difference (margin) per
attribute and as means over the counted attributes.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.errors import CheckpointError, ConfigError
from facegan.data.labels import label_counts
from facegan.data.records import DataError
from facegan.data.stream import ShardSet, eval_loader
from facegan.runtime import distributed

log = logging.getLogger(__name__)

EVAL_JSON = "classifier_eval.json"


# ============================================================================ labels and baseline

def majority_values(pos_A: np.ndarray, n: int) -> np.ndarray:
    """Each attribute's majority value (0/1) among n faces with pos_A positives; ties give 0."""
    return (2 * np.asarray(pos_A) > n).astype(np.int64)


def majority_accuracy(majority_A: np.ndarray, pos_A: np.ndarray, n: int) -> np.ndarray:
    """Accuracy of always predicting majority_A on a split with pos_A positives out of n faces."""
    pos_A = np.asarray(pos_A, dtype=np.float64)
    return np.where(np.asarray(majority_A) == 1, pos_A, n - pos_A) / max(n, 1)


def scored_attrs(attr_names: list[str], wanted: list[str], train_pos: np.ndarray, train_n: int) -> list[str]:
    """The attributes a run trains and scores: `wanted`, or every one whose train labels vary."""
    if wanted:
        unknown = [a for a in wanted if a not in attr_names]
        if unknown:
            raise ConfigError(f"model.attrs: {', '.join(unknown)} not among the shards' attributes "
                              f"({', '.join(attr_names)})")
        fixed = [a for a in wanted if train_pos[attr_names.index(a)] in (0, train_n)]
        if fixed:
            log.warning("model.attrs: %s never change in the train split (nothing to learn)", ", ".join(fixed))
        return [a for a in attr_names if a in wanted]
    varying = [a for a, p in zip(attr_names, train_pos) if 0 < p < train_n]
    if not varying:
        raise ConfigError("data.shards: no attribute takes both values in the train split; nothing to learn")
    return varying


# ============================================================================ models

def load_classifier(path: str | Path) -> nn.Module:
    """The classifier of a checkpoint (or the newest checkpoint of a run folder): CPU, eval mode.

    Loaded with weights_only=True. Besides its weights, the returned module carries plain
    attributes from the checkpoint: `resolution`, `attr_names` (one per logit), `scored_attrs` (the attributes
    it was trained and is scored on), `train_positives`/`train_count` (train-split label counts,
    for the majority baseline) and `checkpoint` (the folder it came from).
    """
    from facegan.families.loading import load_run

    run = load_run(path)
    if run.family.name != "classifier":
        raise CheckpointError(f"{run.checkpoint}: a {run.family.name} checkpoint, not an attribute classifier's "
                              "(train one with `facegan classifier train`)")
    model = run.nets["C"].eval()
    model.resolution = run.cfg.model.resolution
    model.attr_names = list(run.data.attr_names)
    model.scored_attrs = list(run.meta["scored_attrs"])
    model.train_positives = list(run.data.train_positives or [])
    model.train_count = int(run.data.train_count)
    model.checkpoint = str(run.checkpoint)
    return model


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no grads: a fixed function of its input."""
    return module.eval().requires_grad_(False)


@torch.no_grad()
def attribute_probs(classifier: nn.Module, img_BCHW: Tensor) -> Tensor:
    """The classifier's attribute probabilities o_BA (float32) for images in [-1, 1].

    Images are resized to the classifier's `resolution` when it has one and they differ.
    Attributes outside its `scored_attrs` (when it has them) get their train-split rate.
    """
    res = getattr(classifier, "resolution", None)
    if res is not None and tuple(img_BCHW.shape[-2:]) != (res, res):
        img_BCHW = F.interpolate(img_BCHW.float(), size=(res, res), mode="bilinear", align_corners=False,
                                 antialias=True)
    o_BA = torch.sigmoid(classifier(img_BCHW).float())
    scored = getattr(classifier, "scored_attrs", None)
    names = getattr(classifier, "attr_names", None)
    if scored is not None and names is not None and len(scored) < len(names):
        rate_A = torch.tensor(classifier.train_positives, dtype=torch.float32, device=o_BA.device) \
            / max(int(classifier.train_count), 1)
        keep_A = torch.tensor([n in scored for n in names], device=o_BA.device)
        o_BA = torch.where(keep_A, o_BA, rate_A)
    return o_BA


# ============================================================================ evaluation

@torch.no_grad()
def count_correct(model: nn.Module, shards: ShardSet, split: str, *, batch_size: int, device: torch.device,
                   rank: int, world_size: int, num_workers: int, autocast: Any = None) -> torch.Tensor:
    """[correct per attribute..., positives per attribute..., faces] over all ranks' shares of `split`."""
    num_attrs = len(shards.attr_names)
    counts = torch.zeros(2 * num_attrs + 1, dtype=torch.float64)
    # Creating a DataLoader iterator draws a seed from the global RNG; an evaluation must not
    # shift the training run's random stream (exact resume compares runs that evaluated at
    # different points).
    with torch.random.fork_rng(devices=[]):
        for batch in eval_loader(shards, split=split, batch_size=batch_size, rank=rank, world_size=world_size,
                                 num_workers=num_workers):
            with autocast or contextlib.nullcontext():
                logits = model(batch["image"].to(device, non_blocking=True))
            y = batch["attrs"] > 0.5
            pred = (logits.float() > 0).cpu()
            counts[:num_attrs] += (pred == y).sum(0).double()
            counts[num_attrs:-1] += y.sum(0).double()
            counts[-1] += y.shape[0]
    if distributed():
        t = counts.cuda() if dist.get_backend() == "nccl" else counts
        dist.all_reduce(t)
        counts = t.cpu()
    return counts


def summarize(*, split: str, shards: str, attr_names: list[str], scored: list[str], counts: torch.Tensor,
              train_pos: np.ndarray, train_n: int) -> dict[str, Any]:
    """The evaluation record: per scored attribute accuracy, majority baseline and margin; means."""
    num_attrs = len(attr_names)
    c = counts.numpy()
    n = int(c[-1])
    if n == 0:
        raise DataError(f"{shards}: the {split} split holds no labelled faces")
    acc = c[:num_attrs] / n
    majority = majority_values(train_pos, train_n)
    base = majority_accuracy(majority, c[num_attrs:-1], n)
    per_attr = {}
    for name in scored:
        i = attr_names.index(name)
        per_attr[name] = {"accuracy": float(acc[i]), "majority_baseline": float(base[i]),
                          "margin": float(acc[i] - base[i]), "majority_value": int(majority[i]),
                          "positive_rate": float(c[num_attrs + i] / n),
                          "train_positive_rate": float(train_pos[i] / max(train_n, 1))}
    mean = lambda key: float(np.mean([v[key] for v in per_attr.values()]))  # noqa: E731
    return {"split": split, "shards": shards, "num_images": n, "num_scored_attrs": len(scored),
            "mean_accuracy": mean("accuracy"), "mean_majority_baseline": mean("majority_baseline"),
            "mean_margin": mean("margin"), "attrs_beating_baseline": sum(v["margin"] > 0 for v in per_attr.values()),
            "per_attr": per_attr}


def evaluate_classifier(model: nn.Module, shard_dir: str | Path, split: str = "test", *,
                        attr_names: list[str] | None = None, scored: list[str] | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        num_workers: int = 0) -> dict[str, Any]:
    """Accuracy per attribute on `split` of `shard_dir` against the train split's majority baseline.

    `attr_names` names the model's logits (default: `model.attr_names` from load_classifier, else
    the shard set's); `scored` the attributes counted (default: `model.scored_attrs`, else every
    attribute whose train labels vary). The baseline's majority values come from the shard set's
    train split, or from the counts stored in the checkpoint when the shard set has no train split.
    The model is put in eval mode (dropout off, batch-norm running statistics) and left that way.
    """
    shards = ShardSet.open(str(shard_dir))
    res = getattr(model, "resolution", None)
    if res is not None and shards.resolution != (res, res):
        raise DataError(f"{shard_dir}: its images are {shards.resolution[0]}x{shards.resolution[1]}, "
                        f"the classifier takes {res}x{res}")
    names = attr_names or getattr(model, "attr_names", None) or shards.attr_names
    if names != shards.attr_names:
        raise DataError(f"{shard_dir}: its attributes ({len(shards.attr_names)}) are not the ones the classifier "
                        f"predicts ({len(names)}), or not in the same order")
    if split not in ("train", "val", "test") or not shards.count(split):
        raise DataError(f"{shard_dir}: no {split} split (its splits: "
                        f"{', '.join(s for s in ('train', 'val', 'test') if shards.count(s))})")
    train_pos, train_n = label_counts(shards, "train")
    if train_n == 0 and hasattr(model, "train_positives"):
        train_pos, train_n = np.asarray(model.train_positives), model.train_count
    if train_n == 0:
        raise DataError(f"{shard_dir}: no labelled train split for the majority baseline")
    scored = scored or getattr(model, "scored_attrs", None) or scored_attrs(names, [], train_pos, train_n)
    device = torch.device(device)
    model.eval().to(device)
    counts = count_correct(model, shards, split, batch_size=batch_size, device=device, rank=0, world_size=1,
                            num_workers=num_workers, autocast=torch.autocast(device.type, enabled=False))
    return summarize(split=split, shards=str(shard_dir), attr_names=names, scored=scored, counts=counts,
                     train_pos=train_pos, train_n=train_n)


def format_table(result: dict[str, Any]) -> str:
    """A per-attribute table of one evaluation record (`summarize` / `evaluate_classifier`)."""
    rows = [f"{result['split']} split of {result['shards']}: {result['num_images']} faces, "
            f"{result['num_scored_attrs']} attributes scored",
            f"{'attribute':<22} {'accuracy':>9} {'majority':>9} {'margin':>8} {'pos rate':>9}"]
    for name, v in result["per_attr"].items():
        rows.append(f"{name:<22} {v['accuracy']:9.3f} {v['majority_baseline']:9.3f} {v['margin']:+8.3f} "
                    f"{v['positive_rate']:9.3f}")
    rows.append(f"{'mean':<22} {result['mean_accuracy']:9.3f} {result['mean_majority_baseline']:9.3f} "
                f"{result['mean_margin']:+8.3f}")
    rows.append(f"beats the majority baseline on {result['attrs_beating_baseline']} of "
                f"{result['num_scored_attrs']} attributes")
    return "\n".join(rows)
