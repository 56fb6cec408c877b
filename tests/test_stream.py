"""The streaming reader: rank/worker splits, equal step counts, exact resume, damaged shards."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from facegan.config import from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.data.writer import build_shards


def all_keys(shards: Path) -> dict[str, set[str]]:
    from facegan.data.tario import iter_samples

    m = json.loads((shards / "manifest.json").read_text())
    keys: dict[str, set[str]] = {}
    for s in m["shards"]:
        with open(shards / s["name"], "rb") as f:
            keys.setdefault(s["split"], set()).update(x["__key__"] for x in iter_samples(f))
    return keys


@pytest.mark.parametrize("split", ["train", "val"])  # train: 8 shards >= 4 slots; val: 1 shard < 4 slots
def test_eval_stream_2_ranks_x_2_workers_sees_each_sample_once(synthetic_shards: Path, split: str) -> None:
    shard_set = ShardSet.open(str(synthetic_shards))
    seen: Counter[str] = Counter()
    for rank in range(2):
        for batch in eval_loader(shard_set, split=split, batch_size=7, rank=rank, world_size=2, num_workers=2):
            seen.update(batch["key"])
            assert batch["image"].dtype == torch.float32
            assert -1.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    expected = all_keys(synthetic_shards)[split]
    assert set(seen) == expected
    assert max(seen.values()) == 1
    assert sum(seen.values()) == shard_set.count(split)


def test_train_stream_equal_batch_counts_and_disjoint_ranks(synthetic_shards: Path) -> None:
    shard_set = ShardSet.open(str(synthetic_shards))
    per_rank_keys = []
    counts = []
    for rank in range(2):
        loader = train_loader(shard_set, batch_size=8, rank=rank, world_size=2, num_workers=2, seed=5)
        keys: set[str] = set()
        n_batches = 0
        for _epoch in range(3):
            for batch in loader.epoch():
                assert batch["image"].shape == (8, 3, 32, 32)
                assert batch["attrs"].shape == (8, 40)
                keys.update(batch["key"])
                n_batches += 1
        counts.append(n_batches)
        per_rank_keys.append(keys)
    assert counts[0] == counts[1] == 3 * loader.batches_per_epoch
    assert loader.batches_per_epoch == shard_set.count("train") // (2 * 8)
    assert not per_rank_keys[0] & per_rank_keys[1], "ranks must read disjoint shards"
    # Over 3 epochs each rank cycles through its own half of the data.
    assert len(per_rank_keys[0] | per_rank_keys[1]) > 0.8 * shard_set.count("train")


def test_train_stream_is_seeded_and_resumes_exactly(synthetic_shards: Path) -> None:
    shard_set = ShardSet.open(str(synthetic_shards))

    def take(n: int, *, start: int = 0, seed: int = 11) -> list[list[str]]:
        loader = train_loader(shard_set, batch_size=6, num_workers=2, seed=seed, start_batch=start)
        return [next(loader)["key"] for _ in range(n)]

    full = take(30)
    assert take(30) == full                                   # same seed, same stream
    assert take(30, seed=12) != full
    assert take(13, start=17) == full[17:]                    # resume mid-stream, past a pass boundary
    # Each worker reads 4 of the 8 train shards (64 and 56 samples): within a pass nothing repeats,
    # and a new pass begins once a worker's share is used up.
    first_pass = [k for b in full[:18] for k in b]
    assert len(set(first_pass)) == len(first_pass) == 108
    two_passes = [k for b in full[:22] for k in b]
    assert len(set(two_passes)) < len(two_passes)


def test_damaged_samples_and_truncated_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 60, "resolution": 16, "shard_size": 10,
                                     "workers": 1, "test_fraction": 0.0, "val_fraction": 0.5})
    out = tmp_path / "o"
    m = build_shards(recipe, root=None, out=out, progress=False).manifest
    val = [s for s in m["shards"] if s["split"] == "val"]
    assert len(val) >= 2
    # One flipped byte inside the first image of the first val shard (crc32 catches it) ...
    first = out / val[0]["name"]
    data = bytearray(first.read_bytes())
    data[512 + 200] ^= 0xFF
    first.write_bytes(bytes(data))
    # ... and the second val shard cut in the middle.
    second = out / val[1]["name"]
    raw = second.read_bytes()
    second.write_bytes(raw[: len(raw) // 2])

    keys, skipped, bad_shards = [], 0, 0
    for batch in eval_loader(ShardSet.open(str(out)), split="val", batch_size=4):
        keys += batch["key"]
        skipped += batch["num_skipped"]
        bad_shards += batch["num_bad_shards"]
        assert torch.isfinite(batch["image"]).all()
    total = sum(s["count"] for s in val)
    assert skipped >= 1 and bad_shards == 1
    assert len(keys) + skipped == total                      # every sample not delivered is counted ...
    assert len(keys) >= total - 1 - val[1]["count"] // 2 - 1  # ... and the cut shard's head and the rest are kept
    assert len(set(keys)) == len(keys)


def test_few_shards_many_slots_still_equal_steps(tmp_path: Path) -> None:
    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 50, "resolution": 16, "shard_size": 100,
                                     "workers": 1})
    out = tmp_path / "one"
    build_shards(recipe, root=None, out=out, progress=False)
    shard_set = ShardSet.open(str(out))
    assert len(shard_set.urls("train")) == 1
    keys = []
    for rank in range(2):
        loader = train_loader(shard_set, batch_size=4, rank=rank, world_size=2, num_workers=2)
        batches = list(loader.epoch())
        assert len(batches) == loader.batches_per_epoch >= 1
        keys.append({k for b in batches for k in b["key"]})
    assert not keys[0] & keys[1]


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 20, "resolution": 16, "workers": 1,
                                     "val_fraction": 0.0, "test_fraction": 0.0})
    build_shards(recipe, root=None, out=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="no non-empty val shards"):
        eval_loader(ShardSet.open(str(tmp_path / "o")), split="val", batch_size=4)
    shutil.rmtree(tmp_path / "o")
    with pytest.raises(ValueError, match="manifest.json"):
        ShardSet.open(str(tmp_path / "o"))
