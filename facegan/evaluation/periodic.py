"""The metrics of a run config's `eval:` section, computed during training (facegan.loop) at
`eval.every_kimg`: every rank draws its share of the samples, rank 0 gets the scores.

`eval.face: true` adds dlib's face-identity metrics (fid_face, kid_face, precision/recall_face,
identity_diversity, face_detection_rate; facegan.metrics.face), `eval.features: face` makes the
descriptor the main feature network. Both cost about a descriptor per image (README, "Face
identity metrics"); the real images' descriptors are computed once per run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from facegan.evaluation.offline import (EvalRequest, Share, _images_and_features, chunks_for, draw_chunk,
                                        face_fields, make_extractor, merge_shares, statistics)


class PeriodicEval:
    """The metrics of `eval:` in a run config, computed on every rank's share and gathered to rank 0.

    Real features are extracted once (each rank its share of the splits), generated ones at each
    call from the EMA generator; every rank must call it at the same step (collective ops).
    """

    def __init__(self, eval_cfg: Any, *, shards: str, seed: int) -> None:
        self.cfg = eval_cfg
        self.shards = shards
        self.seed = seed
        self.extractor = None
        self.real: Share | None = None

    def _request(self) -> EvalRequest:
        c = self.cfg
        return EvalRequest(shards=self.shards, baseline="random", num_samples=c.num_samples, features=c.features,
                           classifier=c.classifier, inception_weights=c.inception_weights, num_real=c.num_real,
                           batch_size=c.batch_size, seed=self.seed, metrics=list(c.metrics),
                           face="on" if getattr(c, "face", False) else "off",
                           ms_ssim_pairs=min(1000, c.num_samples), kid_subset_size=min(1000, c.num_samples))

    def __call__(self, *, G: nn.Module, D: nn.Module | None, steps: Any, device: torch.device, rank: int,
                 world_size: int, attrs: Tensor | None = None) -> dict[str, float]:
        from facegan.metrics import extract_features, shard_features, shard_images

        req = self._request()
        if self.extractor is None:
            self.extractor = make_extractor(req)
            eval_images, eval_feats = _images_and_features(
                self.extractor, shard_images(shards_dir=self.shards, split=req.eval_split, max_images=req.num_real,
                                             batch_size=req.batch_size, rank=rank, world_size=world_size),
                batch_size=req.batch_size)
            empty, empty_u8 = torch.empty(0), torch.empty(0, dtype=torch.uint8)
            # Only memorisation looks at the training split: skipped (its features too) unless listed.
            train_feats = shard_features(self.extractor, shards_dir=self.shards, split=req.train_split,
                                         max_images=req.num_real, batch_size=req.batch_size, rank=rank,
                                         world_size=world_size) if req.needs_train else empty
            self.real = _gather(Share(fake_feats=empty, fake_images=empty_u8, train_feats=train_feats,
                                      eval_feats=eval_feats, eval_images=eval_images,
                                      **face_fields(req, eval_images=eval_images)), world_size)
        was_training = G.training
        G.eval()
        try:
            images = [draw_chunk(G, i, seed=req.seed, num=n, steps=steps, attrs=attrs, device=device)
                      for i, n in chunks_for(req.num_samples, rank=rank, world_size=world_size)]
        finally:
            G.train(was_training)
        fake_images = torch.cat(images) if images else torch.empty(0, dtype=torch.uint8)
        fake_feats = extract_features(self.extractor, fake_images, batch_size=req.batch_size) if images else torch.empty(0)
        empty, empty_u8 = torch.empty(0), torch.empty(0, dtype=torch.uint8)
        fakes = _gather(Share(fake_feats=fake_feats, fake_images=fake_images, train_feats=empty, eval_feats=empty,
                              eval_images=empty_u8, **face_fields(req, fake_images=fake_images)), world_size)
        if rank != 0:
            return {}
        assert self.real is not None
        share = Share(fake_feats=fakes.fake_feats, fake_images=fakes.fake_images, train_feats=self.real.train_feats,
                      eval_feats=self.real.eval_feats, eval_images=self.real.eval_images,
                      fake_face=fakes.fake_face, fake_detected=fakes.fake_detected,
                      eval_face=self.real.eval_face, eval_detected=self.real.eval_detected)
        scores = statistics(req, share, disc=D)
        return {k: v for k, v in scores.items() if k != "skipped_inputs"}


def _gather(share: Share, world_size: int) -> Share:
    """Every rank's share, concatenated (on every rank). CPU tensors through all_gather_object,
    which works for gloo and nccl alike; shares may differ in length."""
    if world_size == 1:
        return share
    import torch.distributed as dist

    shares: list[Any] = [None] * world_size
    dist.all_gather_object(shares, share)
    # Unused fields are empty 1-d tensors of the field's dtype, which torch.cat passes over.
    return merge_shares(shares)
