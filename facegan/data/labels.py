"""Label statistics read straight from shards (no image decoding): what the attribute families and
the classifier's majority baseline need.

    pos_A, n = label_counts(ShardSet.open("data/celeba64"), "train")
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from facegan.data.store import open_store
from facegan.data.stream import ShardSet, eval_loader
from facegan.data.tario import TarFormatError, iter_samples
from facegan.data.writer import labels_reader, shard_location

log = logging.getLogger(__name__)


def label_counts(shards: ShardSet, split: str) -> tuple[np.ndarray, int]:
    """(positives per attribute, number of labelled faces) in `split`, read without decoding images."""
    num_attrs = len(shards.attr_names)
    pos = np.zeros(num_attrs, dtype=np.int64)
    n = 0
    store = open_store(shard_location(shards.location, shards.manifest))
    read_labels = labels_reader(shards.manifest)
    for rec in shards.shards(split):
        try:
            with store.open_read(rec["name"]) as f:
                for sample in iter_samples(f):
                    labels = read_labels([sample])[0]
                    attrs = labels.get("attrs") if isinstance(labels, dict) else None
                    if attrs is None or len(attrs) != num_attrs:
                        continue
                    pos += np.asarray(attrs, dtype=np.int64) > 0
                    n += 1
        except (TarFormatError, OSError) as exc:  # the stream skips the same damage
            log.warning("shard %s: %s; counted the labels before it", rec["name"], exc)
    return pos, n


def fixed_attrs(shards: ShardSet, n: int, *, split: str = "val") -> torch.Tensor:
    """Attribute rows of the first `n` samples of `split` (cycled if fewer): the same for every
    run on these shards, so conditional sample grids are comparable across ticks and resumes."""
    if shards.count(split) == 0:
        split = "train"
    rows: list[torch.Tensor] = []
    # Creating a DataLoader iterator draws from the global RNG: a training run's stream must not move.
    with torch.random.fork_rng(devices=[]):
        for batch in eval_loader(shards, split=split, batch_size=min(n, 256)):
            rows.append(batch["attrs"])
            if sum(len(r) for r in rows) >= n:
                break
    attrs = torch.cat(rows).float()
    return attrs.repeat((n + len(attrs) - 1) // len(attrs), 1)[:n]
