"""Does GAN augmentation help face recognition with few photos per person? (seed 002's question)

    .venv/bin/python benchmarks/bench_recognition.py --shards data/celeba64 --splits val,test \\
        --checkpoint runs/dcgan_celeba64 --k 3,5,10 --seeds 0,1,2 --variants 4 --direction Smiling=1.5 --jitter 0.3

An identity classifier (a small CNN from scratch, the same recipe and the same number of optimizer
steps in every arm) is trained on K real photos per identity of a shard set with `identity`
labels and scored (top-1) on the identities' remaining photos. Use identities the GAN never saw
(CelebA's val/test identities are disjoint from its train identities). Arms:

- `real`: the K photos only;
- `classical`: the K photos with flips, crops and colour jitter (what the seed says is not enough);
- `facegan`: the K photos plus `--variants` inverted-and-edited variants of each (facegan.augment:
  the same edits, jitter and seeds as `facegan augment`);
- `facegan+classical`: both.

Every photo is inverted once (cached in --out); each (K, seed) draws its own split. Prints mean and
spread over seeds per K and arm; a loss is an honest result too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.augment import Source, augment_batch, shard_sources  # noqa: E402
from facegan.families.loading import load_generator  # noqa: E402
from facegan.inversion import Edit, InvertOptions, load_directions, parse_edit  # noqa: E402


class IdentityCNN(nn.Module):
    def __init__(self, num_ids: int, width: int = 32) -> None:
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3))
        self.head = nn.Linear(c, num_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def classical(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, random resized crop (scale 0.8..1) and colour jitter, per image, seeded."""
    b, _, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(b):
        x = img[i]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        s = 0.8 + 0.2 * float(torch.rand((), generator=gen))
        ch, cw = max(8, int(h * s ** 0.5)), max(8, int(w * s ** 0.5))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        x = nn.functional.interpolate(x[None, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                      align_corners=False)[0]
        bright = 0.3 * (2 * float(torch.rand((), generator=gen)) - 1)
        contrast = 1 + 0.3 * (2 * float(torch.rand((), generator=gen)) - 1)
        mean = x.mean()
        out[i] = ((x - mean) * contrast + mean + bright).clamp(-1, 1)
    return out


def train_and_score(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                    num_ids: int, steps: int, seed: int, augment: bool, batch: int = 64) -> float:
    torch.manual_seed(seed)
    net = IdentityCNN(num_ids)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train_x), (min(batch, len(train_x)),), generator=gen)
        x = train_x[idx]
        if augment:
            x = classical(x, gen)
        loss = nn.functional.cross_entropy(net(x), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(test_x[i:i + 256]).argmax(1) for i in range(0, len(test_x), 256)])
    return float((pred == test_y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--splits", default="val,test", help="splits whose identities are used (default val,test)")
    ap.add_argument("--checkpoint", required=True, help="the GAN whose inversions make the variants")
    ap.add_argument("--k", default="3,5,10", help="real photos per identity in training")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--direction", action="append", default=[], metavar="NAME=SCALE", help="an edit (repeatable)")
    ap.add_argument("--jitter", type=float, default=0.3)
    ap.add_argument("--inversion-steps", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=600, help="optimizer steps per arm (same in every arm)")
    ap.add_argument("--out", default="bench_recognition")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.k.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    gen = load_generator(args.checkpoint)
    sources: list[Source] = list(shard_sources(args.shards, splits=args.splits.split(","), resolution=gen.resolution))
    by_id: dict[int, list[int]] = {}
    for i, s in enumerate(sources):
        by_id.setdefault(int(s.labels.get("identity", -1)), []).append(i)
    by_id.pop(-1, None)
    need = max(ks) + 2
    ids = sorted(i for i, members in by_id.items() if len(members) >= need)
    if len(ids) < 2:
        raise SystemExit(f"need identities with at least {need} photos; found {len(ids)}")
    keep = sorted(i for ident in ids for i in by_id[ident])
    sources = [sources[i] for i in keep]
    label = {ident: n for n, ident in enumerate(ids)}
    y = torch.tensor([label[int(s.labels["identity"])] for s in sources])
    x = torch.stack([s.image for s in sources])
    print(f"{len(ids)} identities, {len(sources)} photos ({', '.join(str(len(by_id[i])) for i in ids[:5])}... each)",
          flush=True)

    edits = [parse_edit(sets=[], attrs="", directions=[d], gen=gen) for d in args.direction] or [Edit(name="jitter")]
    directions = load_directions(gen.checkpoint) if args.direction else None
    cache = out / "variants.pt"
    if cache.is_file():
        variants = torch.load(cache, weights_only=True)
    else:
        t0 = time.perf_counter()
        options = InvertOptions(losses={"mse": 1.0, "ms_ssim": 1.0}, steps=args.inversion_steps)
        parts = []
        for i in range(0, len(sources), 32):
            faces = augment_batch(gen, sources[i:i + 32], edits=edits, variants=args.variants, options=options,
                                  directions=directions, jitter=args.jitter, seed=0)
            parts += [torch.stack([f for _, f in fs]) for fs in faces]
            print(f"  inverted and edited {min(i + 32, len(sources))}/{len(sources)} photos "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        variants = torch.stack(parts)                       # (N, V, 3, H, W)
        torch.save(variants, cache)
    results: dict[str, dict[str, list[float]]] = {}
    for k in ks:
        for seed in seeds:
            g = torch.Generator().manual_seed(1000 * k + seed)
            train_idx, test_idx = [], []
            for ident in ids:
                members = [keep.index(i) for i in by_id[ident]]
                perm = torch.randperm(len(members), generator=g).tolist()
                train_idx += [members[p] for p in perm[:k]]
                test_idx += [members[p] for p in perm[k:]]
            tx, ty = x[train_idx], y[train_idx]
            vx = variants[train_idx].flatten(0, 1)
            vy = y[train_idx].repeat_interleave(variants.shape[1])
            arms = {"real": (tx, ty, False), "classical": (tx, ty, True),
                    "facegan": (torch.cat([tx, vx]), torch.cat([ty, vy]), False),
                    "facegan+classical": (torch.cat([tx, vx]), torch.cat([ty, vy]), True)}
            for arm, (ax, ay, aug) in arms.items():
                acc = train_and_score(ax, ay, x[test_idx], y[test_idx], num_ids=len(ids), steps=args.train_steps,
                                      seed=seed, augment=aug)
                results.setdefault(f"K={k}", {}).setdefault(arm, []).append(acc)
                print(f"K={k} seed {seed} {arm:<18} top-1 {acc:.3f}", flush=True)
    print(f"\ntop-1 on held-out photos of {len(ids)} identities (chance {1 / len(ids):.3f}); mean ± std over seeds "
          f"{seeds}")
    arms = ["real", "classical", "facegan", "facegan+classical"]
    print(f"{'':8}" + "".join(f"{a:>20}" for a in arms))
    for key, row in results.items():
        cells = [f"{statistics.mean(row[a]):.3f} ± {statistics.pstdev(row[a]):.3f}" for a in arms]
        print(f"{key:8}" + "".join(f"{c:>20}" for c in cells))
    (out / "bench_recognition.json").write_text(json.dumps({"identities": len(ids), "photos": len(sources),
                                                            "variants": args.variants, "edits": [e.name for e in edits],
                                                            "jitter": args.jitter, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
