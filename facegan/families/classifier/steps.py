"""The classifier family's one phase and its evaluation against the majority baseline.

    fit(ctx):   masked BCE of the logits against the batch's 0/1 attribute labels (only the scored
                attributes count); reports loss/bce and acc/train
    evaluate:   every eval.every_kimg and at the end, each of eval.splits scored over all ranks'
                shares; at the end the records go to <out_dir>/classifier_eval.json

Tests: .venv/bin/python -m pytest tests/test_classifier.py -q
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.errors import CheckpointError
from facegan.families.base import DataInfo
from facegan.families.classifier import KIND
from facegan.families.classifier.scoring import EVAL_JSON, count_correct, scored_attrs, summarize
from facegan.families.steps import StepContext, Steps
from facegan.runtime import distributed

log = logging.getLogger(__name__)


class ClassifierSteps(Steps):
    def __init__(self, cfg: Any, data: DataInfo) -> None:
        super().__init__(cfg, data)
        self.attr_names = list(data.attr_names)
        self.train_pos = np.asarray(data.train_positives or [0] * len(self.attr_names))
        self.train_n = int(data.train_count)
        self.scored = scored_attrs(self.attr_names, cfg.model.attrs, self.train_pos, self.train_n)
        self.mask_A = torch.tensor([a in self.scored for a in self.attr_names])

    def to(self, device: torch.device | str) -> "ClassifierSteps":
        super().to(device)
        self.mask_A = self.mask_A.to(device)
        return self

    def fit(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        y_BA = ctx.batch["attrs"]
        logits_BA = ctx.nets["C"](ctx.real)
        bce_BA = F.binary_cross_entropy_with_logits(logits_BA.float(), y_BA, reduction="none")
        loss = bce_BA[:, self.mask_A].mean()
        correct = ((logits_BA.detach() > 0) == (y_BA > 0.5))[:, self.mask_A]
        return loss, {"loss/bce": loss.detach(), "acc/train": correct.float().mean()}

    def meta(self) -> dict[str, Any]:
        return {"kind": KIND, "arch": self.cfg.model.arch, "scored_attrs": self.scored}

    def check_resume(self, meta: dict[str, Any], *, where: Any) -> None:
        super().check_resume(meta, where=where)
        if meta.get("scored_attrs") != self.scored:
            raise CheckpointError(f"{where} does not fit this run: scored attributes: checkpoint has "
                                  f"{meta.get('scored_attrs')}, now {self.scored}")

    def tick_images(self, nets, *, latent, attrs, real) -> dict[str, Tensor]:
        return {}

    def evaluate(self, nets: dict[str, nn.Module], *, final: bool, rank: int, world_size: int, out_dir: Any,
                 kimg: float, step: int = 0, images_seen: int = 0, checkpoint: Any = None,
                 autocast: Any = None) -> dict[str, float]:
        from facegan.data.stream import ShardSet

        net = nets["C"]
        if distributed():
            # Batch-norm statistics are per rank between DDP's broadcasts: score rank 0's on all.
            for b in net.buffers():
                dist.broadcast(b, src=0)
        shards = ShardSet.open(self.cfg.data.shards)
        ec = self.cfg.eval
        was_training = net.training
        net.eval()  # dropout off, batch norm on running statistics
        try:
            results = {split: summarize(split=split, shards=self.cfg.data.shards, attr_names=self.attr_names,
                                        scored=self.scored, train_pos=self.train_pos, train_n=self.train_n,
                                        counts=count_correct(net, shards, split, batch_size=ec.batch_size,
                                                             device=self.device, rank=rank, world_size=world_size,
                                                             num_workers=0, autocast=autocast))
                       for split in ec.splits}
        finally:
            net.train(was_training)
        metrics: dict[str, float] = {}
        for split, r in results.items():
            metrics.update({f"eval/{split}/mean_acc": r["mean_accuracy"],
                            f"eval/{split}/mean_baseline": r["mean_majority_baseline"],
                            f"eval/{split}/mean_margin": r["mean_margin"]})
            if final:
                metrics.update({f"eval/{split}/acc/{name}": v["accuracy"] for name, v in r["per_attr"].items()})
        if final and rank == 0:
            doc = {"arch": self.cfg.model.arch, "kimg": kimg, "step": step, "images_seen": images_seen,
                   "checkpoint": str(checkpoint) if checkpoint else "", "scored_attrs": self.scored,
                   "train_count": self.train_n, "splits": results}
            out = Path(out_dir)
            tmp = out / f".{EVAL_JSON}.tmp"
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, out / EVAL_JSON)
        return metrics
