"""Streaming shard reader for training and evaluation, split by rank and by loader worker.

    shards = ShardSet.open("/data/shards/celeba64")
    loader = train_loader(shards, batch_size=128, rank=rank, world_size=world, num_workers=2, seed=0)
    for epoch in range(3):
        for batch in loader.epoch():          # exactly loader.batches_per_epoch batches on every rank
            batch["image"]                     # float32 Bx3xHxW in [-1, 1]

Every (rank, worker) pair is a *slot*. With at least as many shards as slots each slot reads its
own shards (disjoint across ranks: multi-node jobs never read the same data twice); with fewer
shards every slot reads all of them and keeps every n-th sample, which is still disjoint.

Training streams never end: each slot walks its shards in a freshly shuffled order per pass,
through a seeded shuffle buffer. An "epoch" is a fixed number of batches, the same on every rank,
so DDP ranks always agree on the number of steps (a rank that ran dry would hang the all-reduce).
Evaluation streams are read once, not shuffled: across all slots each sample appears exactly once.

Damaged input loses only itself: a sample whose image or labels fail their crc32, that does not
decode to the manifest's shape, or that misses its labels is skipped; a truncated shard yields the
samples before the damage, and a missing shard nothing. All of it is logged (naming the shard) and
counted in the batch: `num_skipped` counts every sample of this reader's share that did not
arrive (damaged, or lost with its shard: the manifest says how many there were),
`num_bad_shards` the shards that could not be read to the end. A reader whose whole share is
unreadable raises DataError instead of waiting forever for a batch.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from facegan.data.imageio import ImageError, decode_hwc
from facegan.data.limits import check_memory
from facegan.data.records import DataError
from facegan.data.store import open_store, open_url
from facegan.data.tario import TarFormatError, iter_samples
from facegan.data.writer import labels_reader, load_manifest, shard_location
from facegan.errors import ConfigError

log = logging.getLogger(__name__)

LABEL_GROUP = 32   # samples whose labels are checked and parsed together


@dataclass(frozen=True)
class ShardSet:
    """A built shard set: its location and manifest."""

    location: str
    manifest: dict[str, Any]

    @classmethod
    def open(cls, location: str) -> "ShardSet":
        return cls(location=str(location), manifest=load_manifest(location))

    @property
    def resolution(self) -> tuple[int, int]:
        h, w = self.manifest["resolution"]
        return int(h), int(w)

    @property
    def attr_names(self) -> list[str]:
        return list(self.manifest["attr_names"])

    def shards(self, split: str) -> list[dict[str, Any]]:
        shards = [s for s in self.manifest["shards"] if s["split"] == split and s["count"] > 0]
        return shards

    def urls(self, split: str) -> list[str]:
        store = open_store(shard_location(self.location, self.manifest))
        return [store.url(s["name"]) for s in self.shards(split)]

    def count(self, split: str) -> int:
        return sum(s["count"] for s in self.shards(split))


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


class ShardStream(IterableDataset):
    """Batches from one rank's share of a split. Use via `train_loader` / `eval_loader`."""

    def __init__(self, *, shard_set: ShardSet, split: str, batch_size: int, rank: int, world_size: int,
                 train: bool, seed: int = 0, shuffle_buffer: int = 1000, start_batch: int = 0,
                 normalize: bool = True, channels_last: bool = False) -> None:
        super().__init__()
        if world_size < 1:
            raise ConfigError(f"world_size: expected a positive integer, got {world_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size}")
        self.urls = shard_set.urls(split)
        if not self.urls:
            raise DataError(f"{shard_set.location}: no non-empty {split} shards")
        h, w = shard_set.resolution
        # A batch lives as uint8 while decoding and float32 after; the loader keeps up to
        # prefetch x workers batches in flight (train_loader: 4 per worker).
        check_memory(min(batch_size, shard_set.count(split)) * 3 * h * w * 5 * 10,
                     what=f"batch_size {batch_size}", hint=f"3x{h}x{w} images; use a smaller batch size")
        counts = [s["count"] for s in shard_set.shards(split)]
        self.counts = counts
        self.offsets = [sum(counts[:i]) for i in range(len(counts))]
        self.split = split
        self.height, self.width = shard_set.resolution
        self.ext = shard_set.manifest["image_ext"]
        self.read_labels = labels_reader(shard_set.manifest)
        self.attr_names = shard_set.attr_names
        self.label_fields = list(shard_set.manifest.get("label_fields", []))
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.train, self.seed = train, seed
        self.shuffle_buffer = shuffle_buffer if train else 0
        self.start_batch = start_batch
        self.normalize = normalize
        self.channels_last = channels_last

    # -- which data this slot reads -------------------------------------------------------
    def _worker(self) -> tuple[int, int]:
        """(logical worker id, number of workers) of the calling loader worker.

        The DataLoader hands out batches round-robin starting with worker 0, so global batch g
        comes from worker g % num_workers. A stream resumed at `start_batch` must start with the
        worker whose turn it is, so loader worker i plays logical worker (i + start_batch) % n.
        """
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        return (worker + self.start_batch) % num_workers, num_workers

    def _assignment(self, slot: int, num_slots: int) -> tuple[list[int], bool]:
        """Shard indices this slot reads, and whether it must also filter samples by index."""
        if len(self.urls) >= num_slots:
            return list(range(slot, len(self.urls), num_slots)), False
        return list(range(len(self.urls))), True

    def _share(self, sid: int, slot: int, num_slots: int, by_sample: bool) -> int:
        """How many samples of shard `sid` the manifest gives this slot."""
        if not by_sample:
            return self.counts[sid]
        return sum(1 for j in range(self.counts[sid]) if (self.offsets[sid] + j) % num_slots == slot)

    def _pass_samples(self, slot: int, num_slots: int, stats: dict[str, int], epoch: int
                      ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """One pass over this slot's data: (sample, labels) of every sample that passes the cheap
        checks (shard order reshuffled per pass when training).

        Accounting is per shard against the manifest: whatever of the slot's share did not pass
        (damaged, missing, cut off) is added to stats["skipped"] once the shard is done, so the
        count is exact however the damage splits or merges tar members.
        """
        shard_ids, by_sample = self._assignment(slot, num_slots)
        order = list(shard_ids)
        if self.train:
            random.Random(_seed(self.seed, slot, num_slots, "order", epoch)).shuffle(order)
        yielded = 0
        for sid in order:
            url = self.urls[sid]
            n = good = 0
            # Samples are checked LABEL_GROUP at a time (one JSON parse for the group's labels).
            group: list[dict[str, Any]] = []
            failure: Exception | None = None
            try:
                with open_url(url) as f:
                    for sample in iter_samples(f):
                        mine = not by_sample or (self.offsets[sid] + n) % num_slots == slot
                        n += 1
                        if mine:
                            group.append(sample)
                        if len(group) == LABEL_GROUP:
                            checked = self._checked(group, url)
                            good += len(checked)
                            yield from checked
                            group = []
            except (TarFormatError, OSError) as exc:
                failure = exc
            checked = self._checked(group, url)   # what was read before the end (or the damage)
            good += len(checked)
            yield from checked
            yielded += good
            if failure is not None:
                stats["bad_shards"] += 1
                log.warning("shard %s: %s; read %d samples before it", url,
                            "missing" if isinstance(failure, FileNotFoundError) else failure, n)
            lost = max(0, self._share(sid, slot, num_slots, by_sample) - good)
            if lost:
                stats["skipped"] += lost
        if not yielded and self.train:
            # An endless stream over a share with nothing readable would never yield a batch.
            raise DataError(f"{self.split} split: none of the {len(order)} shards this reader was given has a "
                            f"readable sample (first: {self.urls[order[0]] if order else 'none'}); run "
                            "`facegan shards verify` on the set")

    @staticmethod
    def _shuffled(samples: Iterator[Any], rng: random.Random, size: int) -> Iterator[Any]:
        if size <= 1:
            yield from samples
            return
        buf: list[Any] = []
        for sample in samples:
            if len(buf) < size:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf

    def _checked(self, samples: list[dict[str, Any]], url: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(sample, labels) of those samples whose image and labels pass their crc32s; the others
        are logged and dropped."""
        pairs = list(zip(samples, self.read_labels(samples)))
        bad = [(sample, labels) for sample, labels in pairs if isinstance(labels, ValueError)]
        for sample, exc in bad:
            log.warning("skipping sample %s of %s: %s", sample.get("__key__"), url, exc)
        return [pair for pair in pairs if not isinstance(pair[1], ValueError)] if bad else pairs

    def _decode_rows(self, pending: list[tuple[dict[str, Any], dict[str, Any]]], pixels: np.ndarray,
                     labels: list[dict[str, Any]], keys: list[str], stats: dict[str, int], bad_in_a_row: int) -> int:
        """Decode `pending` samples into the next rows of `pixels` (labels and keys appended);
        a sample that does not decode is logged and counted. Returns the run of failures."""
        ext, h, w = self.ext, self.height, self.width
        for sample, lab in pending:
            try:
                decode_hwc(sample[ext], ext=ext, height=h, width=w, out=pixels[len(keys)])
            except ImageError as exc:
                stats["skipped"] += 1
                bad_in_a_row += 1
                log.warning("skipping sample %s: %s", sample.get("__key__"), exc)
                if self.train and bad_in_a_row > sum(self.counts):
                    raise DataError(f"{self.split} split: no sample of this reader's share decodes "
                                    f"(last: {exc}); run `facegan shards verify` on the set") from None
                continue
            bad_in_a_row = 0
            labels.append(lab)
            keys.append(sample["__key__"])
        return bad_in_a_row

    def _collate(self, pixels_BHWC: np.ndarray, labels: list[dict[str, Any]], keys: list[str],
                 stats: dict[str, int]) -> dict[str, Any]:
        img = torch.from_numpy(pixels_BHWC).permute(0, 3, 1, 2)   # NCHW view of NHWC memory
        if self.normalize:
            img = to_unit_range(img, channels_last=self.channels_last)
        elif not self.channels_last:
            # A contiguous NCHW batch (what `.view` expects); channels_last (for models run
            # that way) skips the transpose. numpy's uint8 transpose is ~2x torch's here.
            img = torch.from_numpy(np.ascontiguousarray(pixels_BHWC.transpose(0, 3, 1, 2)))
        batch: dict[str, Any] = {"image": img, "key": keys}
        # numpy converts nested lists ~2x faster than torch.tensor does.
        if self.attr_names:
            batch["attrs"] = torch.from_numpy(np.array([lab.get("attrs", [0] * len(self.attr_names))
                                                        for lab in labels], dtype=np.float32))
        for name in ("identity", "partition", "age", "gender", "race"):
            if name in self.label_fields:
                batch[name] = torch.from_numpy(np.array([lab.get(name) if lab.get(name) is not None else -1
                                                         for lab in labels], dtype=np.int64))
        batch["num_skipped"] = stats["skipped"] - stats["reported_skipped"]
        batch["num_bad_shards"] = stats["bad_shards"] - stats["reported_bad_shards"]
        stats["reported_skipped"], stats["reported_bad_shards"] = stats["skipped"], stats["bad_shards"]
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._worker()
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        # Batches this logical worker produced before `start_batch`: dropped without decoding.
        to_skip = max(0, (self.start_batch - worker + num_workers - 1) // num_workers)
        stats = {"skipped": 0, "bad_shards": 0, "reported_skipped": 0, "reported_bad_shards": 0}
        rng = random.Random(_seed(self.seed, slot, num_slots, "buffer"))
        # The buffer is flushed at the end of every pass, so within a pass each of this slot's
        # samples comes exactly once; an unflushed buffer would repeat samples across passes.
        samples = itertools.chain.from_iterable(
            self._shuffled(self._pass_samples(slot, num_slots, stats, epoch), rng, self.shuffle_buffer)
            for epoch in (itertools.count() if self.train else range(1)))
        bs, h, w = self.batch_size, self.height, self.width

        def new_buffer() -> np.ndarray:
            # Samples decode straight into their row of the batch: no per-image tensor, one
            # layout change and float conversion per batch.
            return np.empty((bs, h, w, 3), dtype=np.uint8)

        pixels = new_buffer()
        labels: list[dict[str, Any]] = []
        keys: list[str] = []
        # Evaluation holds a full batch back until the next sample arrives, so the last batch
        # carries the counts of a damaged last shard (they are known only once it is read).
        held: tuple[np.ndarray, list[dict[str, Any]], list[str]] | None = None
        bad_in_a_row = 0
        # Samples are decoded a batch's worth at a time, one after another: the decoder's code and
        # tables stay in the CPU caches instead of alternating with tar parsing and shuffling.
        # The batch is still the first `bs` samples that decode, in stream order.
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for sample, lab in itertools.chain(samples, [(None, None)]):
            if sample is None:   # the end of an evaluation stream: decode what is left
                if not pending:
                    break
            elif to_skip > 0:
                keys.append(sample["__key__"])
                if len(keys) == bs:
                    keys, to_skip = [], to_skip - 1
                continue
            else:
                pending.append((sample, lab))
                if len(keys) + len(pending) < bs:
                    continue
            before = len(keys)
            bad_in_a_row = self._decode_rows(pending, pixels, labels, keys, stats, bad_in_a_row)
            pending = []
            if held is not None and len(keys) > before:
                yield self._collate(*held, stats)
                held = None
            if len(keys) == bs:
                if self.train:
                    yield self._collate(pixels, labels, keys, stats)
                else:
                    held = (pixels, labels, keys)
                pixels, labels, keys = new_buffer(), [], []
        if held is not None:
            yield self._collate(*held, stats)
        elif keys and not self.train:
            yield self._collate(pixels[:len(keys)], labels, keys, stats)
        elif stats["skipped"] > stats["reported_skipped"] or stats["bad_shards"] > stats["reported_bad_shards"]:
            # No batch to carry the counts: say it rather than end as if the share were empty.
            raise DataError(f"{self.split} split: nothing readable in this reader's share "
                            f"({stats['skipped']} samples lost, {stats['bad_shards']} shard reads failed); "
                            "run `facegan shards verify` on the set")


def to_unit_range(img: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW images as float32 in [-1, 1] (x / 127.5 - 1), laid out contiguous NCHW or
    channels_last. One pass converts (and transposes, when the layouts differ) into the new
    batch, then the arithmetic runs in place: the same values bit for bit as converting a
    contiguous copy, at half the cost."""
    out = torch.empty(img.shape, dtype=torch.float32,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return out.copy_(img).div_(127.5).sub_(1.0)


class TrainLoader:
    """An endless DataLoader over a ShardStream, cut into equal epochs on every rank."""

    def __init__(self, stream: ShardStream, *, num_workers: int, batches_per_epoch: int,
                 pin_memory: bool = False, normalize_here: bool = False) -> None:
        self.stream = stream
        self.batches_per_epoch = batches_per_epoch
        self.normalize_here = normalize_here   # the stream sends uint8; map it to [-1, 1] here
        # Own generator: creating a DataLoader iterator draws a base seed, and drawing it from the
        # global RNG would shift dropout's random stream and break exact resume.
        self.loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                 collate_fn=_as_is,
                                 persistent_workers=False, prefetch_factor=4 if num_workers else None,
                                 generator=torch.Generator().manual_seed(stream.seed))
        self._it: Iterator[dict[str, Any]] | None = None
        self.batches_seen = stream.start_batch

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.loader)
        self.batches_seen += 1
        batch = next(self._it)
        if self.normalize_here:
            batch["image"] = to_unit_range(batch["image"], channels_last=self.stream.channels_last)
        return batch

    def __iter__(self) -> "TrainLoader":
        return self

    def epoch(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.batches_per_epoch):
            yield next(self)


def train_loader(shard_set: ShardSet, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, seed: int = 0, shuffle_buffer: int = 1000, start_batch: int = 0,
                 split: str = "train", normalize: bool = True, pin_memory: bool = False,
                 channels_last: bool = False) -> TrainLoader:
    """Endless shuffled batches of this rank's share of `split`; see the module docstring.

    `start_batch` resumes a stream exactly where batch number `start_batch` would have come
    (same seed, world size and worker count), skipping earlier batches without decoding them.
    `channels_last=True` returns images as an NCHW view of NHWC memory (torch.channels_last),
    saving the loader a transpose; `normalize=False` returns uint8 (normalise on the GPU).
    """
    # Loader workers hand batches over in shared memory, whose fresh pages cost more than the
    # conversion: a float batch is 4x the bytes of its uint8 pixels. So with workers the stream
    # sends uint8 and the main process maps it to [-1, 1], with the same arithmetic.
    normalize_here = normalize and num_workers > 0
    stream = ShardStream(shard_set=shard_set, split=split, batch_size=batch_size, rank=rank,
                         world_size=world_size, train=True, seed=seed, shuffle_buffer=shuffle_buffer,
                         start_batch=start_batch, normalize=normalize and not normalize_here,
                         channels_last=channels_last)
    share = shard_set.count(split) // world_size
    if batch_size > share:
        # Each batch would need more than a whole pass over this rank's data (repeats within a
        # batch; with a huge batch size a wait of minutes before the first one).
        raise ConfigError(f"batch_size: {batch_size} is larger than this rank's share of the {split} split "
                          f"({shard_set.count(split)} samples over {world_size} rank(s) = {share}); "
                          f"use at most {share}")
    batches_per_epoch = max(1, shard_set.count(split) // (world_size * batch_size))
    return TrainLoader(stream, num_workers=num_workers, batches_per_epoch=batches_per_epoch,
                       pin_memory=pin_memory, normalize_here=normalize_here)


def eval_loader(shard_set: ShardSet, *, split: str = "val", batch_size: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, normalize: bool = True,
                channels_last: bool = False) -> DataLoader:
    """One pass over this rank's share of `split`; over all ranks each sample appears once."""
    stream = ShardStream(shard_set=shard_set, split=split, batch_size=batch_size, rank=rank,
                         world_size=world_size, train=False, normalize=normalize, channels_last=channels_last)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_as_is)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's per-batch hook: a stream's batches are final (its default walks every key
    string of every batch, ~4 us per sample)."""
    return batch
