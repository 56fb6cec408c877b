"""Face-attribute classifiers: training, evaluation against the majority baseline, loading.

    facegan classifier train configs/classifier_demo.yaml --no-ray          # in-process
    facegan classifier train configs/classifier_celeba64.yaml               # Ray Train workers
    facegan classifier eval --checkpoint runs/classifier_celeba64 --shards data/celeba64 --split test

`train_classifier(cfg, hooks=...)` goes through the same pieces as the GAN loop: the endless
shard stream of the train split, `facegan.hooks.Hooks` (rank, device, DDP wrapping, reports,
stop requests, sinks), `Stats`/`JsonlSink`, progress in kimg with ticks, checkpoints written by
facegan.checkpoint (exact resume: model, optimizer, every rank's RNG and the stream position),
and `train.max_minutes`. It imports neither Ray nor W&B.

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
attribute and as means over the counted attributes, into `<out_dir>/classifier_eval.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facegan.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from facegan.config import ClassifierModelConfig, ClassifierRunConfig, ConfigError, from_dict, to_dict
from facegan.data.records import DataError
from facegan.data.store import open_store
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.data.tario import TarFormatError, iter_samples
from facegan.hooks import Hooks
from facegan.models.classifier import CLASSIFIERS
from facegan.runtime import (BadSteps, agree, all_ranks_finite, bare, distributed, gather_rng, resume_dir,
                             setup_torch)
from facegan.stats import JsonlSink, Stats

log = logging.getLogger(__name__)

EVAL_JSON = "classifier_eval.json"
KIND = "classifier"                      # meta["kind"] of classifier checkpoints


# ============================================================================ labels and baseline

def label_counts(shards: ShardSet, split: str) -> tuple[np.ndarray, int]:
    """(positives per attribute, number of labelled faces) in `split`, read without decoding images."""
    num_attrs = len(shards.attr_names)
    pos = np.zeros(num_attrs, dtype=np.int64)
    n = 0
    store = open_store(shards.location)
    for rec in shards.shards(split):
        try:
            with store.open_read(rec["name"]) as f:
                for sample in iter_samples(f):
                    raw = sample.get("json")
                    attrs = json.loads(raw).get("attrs") if raw is not None else None
                    if attrs is None or len(attrs) != num_attrs:
                        continue
                    pos += np.asarray(attrs, dtype=np.int64) > 0
                    n += 1
        except (TarFormatError, OSError) as exc:  # the stream skips the same damage
            log.warning("shard %s: %s; counted the labels before it", rec["name"], exc)
    return pos, n


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

def build_classifier(model_cfg: ClassifierModelConfig, *, num_attrs: int) -> nn.Module:
    return CLASSIFIERS[model_cfg.arch](num_attrs=num_attrs, **model_cfg.build_kwargs())


def load_classifier(path: str | Path) -> nn.Module:
    """The classifier of a checkpoint (or the newest checkpoint of a run folder): CPU, eval mode.

    Loaded with weights_only=True. Besides its weights, the returned module carries plain
    attributes from the checkpoint: `resolution`, `attr_names` (one per logit), `scored_attrs` (the attributes
    it was trained and is scored on), `train_positives`/`train_count` (train-split label counts,
    for the majority baseline) and `checkpoint` (the folder it came from).
    """
    ckpt = find_checkpoint(path)
    state, meta = load_checkpoint(ckpt)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{ckpt}: not a classifier checkpoint (kind {meta.get('kind')!r}); "
                              "GAN checkpoints load with `facegan sample`")
    try:
        model_cfg = from_dict(ClassifierModelConfig, meta["model"], where="model")
        model = build_classifier(model_cfg, num_attrs=len(meta["attr_names"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{ckpt}: cannot rebuild the classifier: {exc}") from None
    model.eval()
    model.resolution = model_cfg.resolution
    model.attr_names = list(meta["attr_names"])
    model.scored_attrs = list(meta["scored_attrs"])
    model.train_positives = list(meta["train_positives"])
    model.train_count = int(meta["train_count"])
    model.checkpoint = str(ckpt)
    return model


# ============================================================================ evaluation

@torch.no_grad()
def _count_correct(model: nn.Module, shards: ShardSet, split: str, *, batch_size: int, device: torch.device,
                   rank: int, world_size: int, num_workers: int, autocast: Any) -> torch.Tensor:
    """[correct per attribute..., positives per attribute..., faces] over all ranks' shares of `split`."""
    num_attrs = len(shards.attr_names)
    counts = torch.zeros(2 * num_attrs + 1, dtype=torch.float64)
    # Creating a DataLoader iterator draws a seed from the global RNG; an evaluation must not
    # shift the training run's random stream (exact resume compares runs that evaluated at
    # different points).
    with torch.random.fork_rng(devices=[]):
        for batch in eval_loader(shards, split=split, batch_size=batch_size, rank=rank, world_size=world_size,
                                 num_workers=num_workers):
            with autocast:
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
    counts = _count_correct(model, shards, split, batch_size=batch_size, device=device, rank=0, world_size=1,
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


# ============================================================================ training

def _check_resumable(meta: dict[str, Any], cfg: ClassifierRunConfig, attr_names: list[str], scored: list[str],
                     where: Path) -> None:
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{where}: not a classifier checkpoint (kind {meta.get('kind')!r})")
    saved, now = meta.get("model", {}), to_dict(cfg.model)
    diffs = [f"model.{k}: checkpoint has {saved.get(k)!r}, config has {now[k]!r}"
             for k in ("arch", "resolution", "dense_units") if saved.get(k) != now[k]]
    if meta.get("attr_names") != attr_names:
        diffs.append("the shard set's attribute names differ")
    if meta.get("scored_attrs") != scored:
        diffs.append(f"scored attributes: checkpoint has {meta.get('scored_attrs')}, now {scored}")
    if diffs:
        raise CheckpointError(f"{where} does not fit this run: " + "; ".join(diffs))


def check_shards(cfg: ClassifierRunConfig, shards: ShardSet) -> list[str]:
    """The shard set's attribute names, after checking it fits cfg (resolution, labels, eval splits);
    run before Ray starts (facegan.launch.trainer.preflight) and again in every worker."""
    res = cfg.model.resolution
    if shards.resolution != (res, res):
        raise ConfigError(f"model.resolution {res} does not match the shards in {cfg.data.shards} "
                          f"({shards.resolution[0]}x{shards.resolution[1]})")
    if not shards.attr_names:
        raise ConfigError(f"data.shards: {cfg.data.shards} carries no attribute labels")
    missing = [s for s in cfg.eval.splits if not shards.count(s)]
    if missing:
        raise ConfigError(f"eval.splits: {cfg.data.shards} has no {', '.join(missing)} split")
    return list(shards.attr_names)


def train_classifier(cfg: ClassifierRunConfig, *, hooks: Hooks | None = None) -> dict[str, float]:
    """Train cfg.model.arch on the attribute labels of cfg.data.shards; returns the final metrics.

    The final metrics include `eval/<split>/mean_acc`, `.../mean_baseline`, `.../mean_margin` and
    per-attribute `eval/<split>/acc/<name>`; the full records go to <out_dir>/classifier_eval.json.
    """
    hooks = hooks or Hooks()
    rank, world = hooks.rank, hooks.world_size
    tc, ec = cfg.train, cfg.eval
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    device, amp_dtype = setup_torch(tc, hooks)

    shards = ShardSet.open(cfg.data.shards)
    attr_names = check_shards(cfg, shards)
    # Every rank reads the same labels, so every rank derives the same attributes and baseline.
    train_pos, train_n = label_counts(shards, "train")
    scored = scored_attrs(attr_names, cfg.model.attrs, train_pos, train_n)
    mask_A = torch.tensor([a in scored for a in attr_names], device=device)

    torch.manual_seed(tc.seed)  # same initial weights on every rank
    model = build_classifier(cfg.model, num_attrs=len(attr_names))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    torch.manual_seed(tc.seed * 1000 + rank)  # dropout masks differ per rank

    step, images_seen, bad_total = 0, 0, 0
    resume = resume_dir(cfg.train.resume, hooks, ckpt_root)
    if resume is not None:
        state, meta = load_checkpoint(resume)
        _check_resumable(meta, cfg, attr_names, scored, resume)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{resume}: does not fit this model: {exc}") from None
        step, images_seen, bad_total = meta["step"], meta["images_seen"], meta.get("bad_steps", 0)
        rng = state.get("rng", {})
        if meta.get("world_size") == world and f"torch_rank{rank}" in rng:
            torch.set_rng_state(rng[f"torch_rank{rank}"])
            if device.type == "cuda" and f"cuda_rank{rank}" in rng:
                torch.cuda.set_rng_state(rng[f"cuda_rank{rank}"], device)
        else:
            log.warning("resuming with %d ranks from a %s-rank checkpoint: RNG streams restart",
                        world, meta.get("world_size"))
        if rank == 0:
            log.info("resumed from %s at step %d (%.1f kimg)", resume, step, images_seen / 1000)

    model.to(device)
    for s in opt.state.values():  # optimizer state follows its parameters' device
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and k != "step":
                s[k] = v.to(device)
    model_t = hooks.wrap_model(model, device)
    loader = train_loader(shards, batch_size=cfg.data.batch_size, rank=rank, world_size=world,
                          num_workers=cfg.data.num_workers, seed=tc.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                          start_batch=step, pin_memory=device.type == "cuda")
    # gather_rng wants a generator; the classifier draws only from the global RNG (dropout).
    unused_gen = torch.Generator()

    batch_total = cfg.data.batch_size * world
    total_images = int(round(tc.total_kimg * 1000))
    tick_images = max(batch_total, int(tc.tick_kimg * 1000))
    ckpt_images = max(batch_total, int(tc.checkpoint_kimg * 1000))
    eval_images = max(batch_total, int(ec.every_kimg * 1000)) if ec.every_kimg > 0 else 0
    next_tick = (images_seen // tick_images + 1) * tick_images
    next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
    next_eval = (images_seen // eval_images + 1) * eval_images if eval_images else None
    stats = Stats()
    sinks = (JsonlSink(out / "losses.jsonl"),) + tuple(hooks.sinks) if rank == 0 else ()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        log.info("classifier %s on %d of %d attributes: %s", cfg.model.arch, len(scored), len(attr_names),
                 ", ".join(scored))
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    t_tick, img_tick, t_start = time.perf_counter(), images_seen, time.perf_counter()
    last_ckpt: Path | None = resume
    metrics: dict[str, float] = {}
    final: dict[str, dict[str, Any]] | None = None
    skipped_samples = 0
    bad = BadSteps(max_in_row=tc.max_bad_steps, rank=rank, total=bad_total, advice="Lower optim.lr or check the data.")

    def evaluate(splits: list[str]) -> dict[str, dict[str, Any]]:
        net = bare(model_t)
        if distributed():
            # Batch-norm statistics are per rank between DDP's broadcasts: score rank 0's on all.
            for b in net.buffers():
                dist.broadcast(b, src=0)
        net.eval()  # dropout off, batch norm on running statistics
        try:
            return {split: summarize(split=split, shards=cfg.data.shards, attr_names=attr_names, scored=scored,
                                     train_pos=train_pos, train_n=train_n,
                                     counts=_count_correct(net, shards, split, batch_size=ec.batch_size, device=device,
                                                           rank=rank, world_size=world, num_workers=0,
                                                           autocast=autocast))
                    for split in splits}
        finally:
            net.train()

    def eval_metrics(results: dict[str, dict[str, Any]], *, per_attr: bool) -> dict[str, float]:
        m = {}
        for split, r in results.items():
            m.update({f"eval/{split}/mean_acc": r["mean_accuracy"], f"eval/{split}/mean_baseline":
                      r["mean_majority_baseline"], f"eval/{split}/mean_margin": r["mean_margin"]})
            if per_attr:
                m.update({f"eval/{split}/acc/{name}": v["accuracy"] for name, v in r["per_attr"].items()})
        return m

    def write_eval(results: dict[str, dict[str, Any]]) -> None:
        if rank == 0:
            doc = {"arch": cfg.model.arch, "kimg": images_seen / 1000, "step": step, "images_seen": images_seen,
                   "checkpoint": str(last_ckpt) if last_ckpt else "", "scored_attrs": scored,
                   "train_count": train_n, "splits": results}
            tmp = out / f".{EVAL_JSON}.tmp"
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, out / EVAL_JSON)

    def write_checkpoint() -> Path | None:
        rng = gather_rng(unused_gen, device)
        if rank != 0:
            return None
        meta = {"kind": KIND, "arch": cfg.model.arch, "model": to_dict(cfg.model), "attr_names": attr_names,
                "scored_attrs": scored, "train_positives": train_pos.tolist(), "train_count": train_n,
                "step": step, "images_seen": images_seen, "kimg": images_seen / 1000, "world_size": world,
                "loader": {"seed": tc.seed, "start_batch": step, "num_workers": cfg.data.num_workers,
                           "batch_size": cfg.data.batch_size},
                "bad_steps": bad.total, "config": to_dict(cfg)}
        state = {"model": bare(model_t).state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                 "rng": rng}
        path = save_checkpoint(ckpt_root / f"ckpt-{images_seen:09d}", state=state, meta=meta)
        prune_checkpoints(ckpt_root, keep=tc.keep_checkpoints)
        return path

    model_t.train()
    while images_seen < total_images:
        batch = next(loader)
        skipped_samples += batch["num_skipped"]
        img = batch["image"].to(device, non_blocking=True)
        y = batch["attrs"].to(device, non_blocking=True)
        with autocast:
            logits = model_t(img)
        bce = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        loss = bce[:, mask_A].mean()
        step_ok = all_ranks_finite(loss)
        if step_ok:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        step += 1
        images_seen += batch_total
        bad.record(step_ok, step=step, images_seen=images_seen, last_ckpt=last_ckpt)
        if step_ok:
            correct = ((logits.detach() > 0) == (y > 0.5))[:, mask_A]
            stats.add({"loss/bce": loss.detach(), "acc/train": correct.float().mean()})

        at_tick = images_seen >= next_tick or images_seen >= total_images
        # Rank 0 decides at ticks and shares the decision, so all ranks stop (and evaluate) together.
        out_of_time = at_tick and tc.max_minutes > 0 and agree(time.perf_counter() - t_start > tc.max_minutes * 60)
        finishing = images_seen >= total_images or out_of_time
        at_ckpt = images_seen >= next_ckpt or finishing
        if not (at_tick or at_ckpt):
            continue
        rows = stats.pop_steps()
        if rank == 0:
            first = step - len(rows) + 1
            rows = [dict(r, kind="step", step=first + i, kimg=(first + i) * batch_total / 1000)
                    for i, r in enumerate(rows)]
            for sink in sinks:
                sink.log_rows(rows)
        dt = time.perf_counter() - t_tick
        metrics = stats.reduce()
        metrics.update(kimg=images_seen / 1000, step=step, images_seen=images_seen,
                       img_per_sec=(images_seen - img_tick) / max(dt, 1e-9), bad_steps=bad.total,
                       skipped_samples=skipped_samples)
        ckpt_dir = None
        if at_ckpt:
            ckpt_dir = write_checkpoint()
            if ckpt_dir is not None:
                last_ckpt = ckpt_dir
            next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
            if distributed():
                dist.barrier()  # the checkpoint exists on disk before anyone reports it
        if finishing:
            final = evaluate(ec.splits)
            write_eval(final)
            metrics.update(eval_metrics(final, per_attr=True))
        elif next_eval is not None and images_seen >= next_eval:
            metrics.update(eval_metrics(evaluate(ec.splits), per_attr=False))
        if next_eval is not None:
            next_eval = (images_seen // eval_images + 1) * eval_images
        if rank == 0:
            for sink in sinks:
                sink.log(metrics, step=step)
            log.info("kimg %.1f step %d: %s", metrics["kimg"], step,
                     " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                              if "/" in k and "/acc/" not in k))
        t_tick, img_tick = time.perf_counter(), images_seen
        next_tick = (images_seen // tick_images + 1) * tick_images
        hooks.report(metrics, ckpt_dir)
        if out_of_time:
            log.info("train.max_minutes=%g reached at %.1f kimg: stopping", tc.max_minutes, images_seen / 1000)
            break
        if hooks.should_stop():
            break

    if final is None:
        # Stopped by the runner, or resumed from a checkpoint at the end: score what there is.
        final = evaluate(ec.splits)
        write_eval(final)
        metrics = dict(metrics, **eval_metrics(final, per_attr=True))
    if rank == 0:
        for sink in hooks.sinks:
            sink.close()
    return metrics
