"""What one training step sends between ranks, per family: measured in a 2-rank gloo run of the
real loop (`facegan.loop.train`) for every family in `facegan.families.FAMILIES` at its default
64x64 config, with a DDP comm hook on every wrapped net (as bench_ddp's CommProbe).

    .venv/bin/python benchmarks/bench_comm.py                     # all families, ~5-10 min on 2 busy cores
    .venv/bin/python benchmarks/bench_comm.py --families dcgan wgangp --out /tmp/comm.json

Per family and step (the median over the measured steps; rank 0's view, every rank does the same):
  grad MiB      gradient bytes DDP all-reduces, per net (the comm hook sees each bucket's buffer)
  buckets       gradient all-reduce calls (DDP buckets; each pays the collective's latency)
  params MiB    trainable parameter bytes (what one all-reduce of every gradient would send)
  small         other collectives in the step (finiteness flags, family statistics, DDP's
                batch-norm buffer broadcasts before each forward): count and bytes

Steps are told apart by the loop's per-step `progress` call on rank 0's sinks; the first step
(DDP's bucket rebuild) is not measured. A family whose nets grow (progressive) is run with short
stages so the last measured step has every level trainable. Feeds docs/scaling.md
(`benchmarks/scaling_model.py --comm <this JSON>`).

Each family's config: its defaults at model.resolution 64 (progressive: base_size 8, so 8 * 2**3),
batch 8 per rank (the bytes do not depend on it), with what a default config needs to run without
other artefacts: overlay takes attributes from the labels, the predictor an untrained InfoGAN.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from facegan.config import from_dict, to_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.writer import build_shards
from facegan.families import FAMILIES, RunConfig
from facegan.hooks import Hooks
from facegan.loop import train

EXTRA: dict[str, dict[str, dict[str, Any]]] = {   # what a default config needs to run here
    "overlay": {"gan": {"attr_source": "labels"}},
    "predictor": {"gan": {"generator": "untrained:infogan"}},
    "progressive": {"model": {"base_size": 8}, "gan": {"stable_kimg": 0.016, "fade_kimg": 0.016},
                    "train": {"video": False}},
}
BATCH = 8


def family_config(name: str, shards: Path, out: Path, steps: int) -> dict[str, Any]:
    family = FAMILIES[name]
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": BATCH, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": name, "resolution": 64},
        "train": {"total_kimg": 1, "tick_kimg": 1000, "checkpoint_kimg": 1000, "num_threads": 1,
                  "device": "cpu", "out_dir": str(out)},
        "wandb": {"enabled": False},
    }
    if "grid_size" in {f for f in family.train_options.__dataclass_fields__}:
        data["train"]["grid_size"] = 4
    for section, values in EXTRA.get(name, {}).items():
        data[section] = dict(data.get(section, {}), **values)
    cfg = from_dict(RunConfig, data)
    per_step = BATCH * 2 * sum(p.repeat for p in family.phases(cfg) if p.uses_data)
    data["train"]["total_kimg"] = steps * per_step / 1000
    return to_dict(from_dict(RunConfig, data))


_ORIGINAL: dict[str, Any] = {}
_PROBE: list["Probe"] = []


def patch_collectives() -> None:
    """Count torch.distributed's all_reduce, broadcast and _broadcast_coalesced (DDP's buffer
    broadcasts) into the current Probe. Once per process."""
    def counted(kind: str, fn: Any, tensor_arg: int) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = args[tensor_arg] if len(args) > tensor_arg else kwargs.get("tensor", kwargs.get("tensors"))
            tensors = t if isinstance(t, (list, tuple)) else [t]
            if _PROBE:
                _PROBE[0].events.append((time.perf_counter(), kind, "", sum(
                    x.numel() * x.element_size() for x in tensors if isinstance(x, torch.Tensor))))
            return fn(*args, **kwargs)
        return wrapper

    for kind, name, arg in (("all_reduce", "all_reduce", 0), ("broadcast", "broadcast", 0),
                            ("buffer_broadcast", "_broadcast_coalesced", 1)):
        _ORIGINAL[name] = getattr(dist, name)
        setattr(dist, name, counted(kind, _ORIGINAL[name], arg))


class Probe:
    """Events on this rank: DDP gradient buckets per net (comm hook), other collectives (the
    patched torch.distributed functions), and step ends (the loop's `progress` call on rank 0's sinks)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, int]] = []   # (time, kind, what, bytes)
        self.steps: list[float] = []
        self.params: dict[str, int] = {}
        _PROBE[:] = [self]

    def wrap(self, module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
        ddp = Hooks().wrap_model(module, device, **ddp_options)
        name = type(module).__name__
        self.params[name] = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
        if isinstance(ddp, nn.parallel.DistributedDataParallel):
            def hook(state, bucket):  # no hints: DDP rejects string annotations (PEP 563)
                buf = bucket.buffer()
                self.events.append((time.perf_counter(), "grad", name, buf.numel() * buf.element_size()))
                buf.div_(dist.get_world_size())
                # The reduce itself, past the counting wrapper (counted here as "grad", not again).
                work = _ORIGINAL["all_reduce"](buf, async_op=True)
                return work.get_future().then(lambda fut: fut.value()[0])

            ddp.register_comm_hook(None, hook)
        return ddp

    # a sink (rank 0): the loop calls progress() at the end of every step
    def progress(self, images_seen: int) -> None:
        self.steps.append(time.perf_counter())

    def log_rows(self, rows: Any) -> None:
        pass

    def log(self, metrics: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def per_step(self) -> list[dict[str, Any]]:
        rows, start = [], 0.0
        for end in self.steps:
            inside = [e for e in self.events if start <= e[0] < end]
            grads: dict[str, int] = {}
            for _, kind, what, n in inside:
                if kind == "grad":
                    grads[what] = grads.get(what, 0) + n
            rows.append({"grad_bytes": grads, "buckets": sum(1 for e in inside if e[1] == "grad"),
                         "small": {k: [sum(1 for e in inside if e[1] == k), sum(e[3] for e in inside if e[1] == k)]
                                   for k in ("all_reduce", "broadcast", "buffer_broadcast")}})
            start = end
        return rows


def worker(rank: int, world: int, port: int, jobs: list[tuple[str, dict]], result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RES_OPTIONS="attempts:0")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    patch_collectives()
    results = {}
    for name, cfg_dict in jobs:
        probe = Probe()
        t0 = time.perf_counter()
        train(from_dict(RunConfig, cfg_dict), hooks=Hooks(rank=rank, world_size=world, wrap_model=probe.wrap,
                                                          sinks=(probe,) if rank == 0 else ()))
        results[name] = {"steps": probe.per_step(), "params": probe.params, "seconds": time.perf_counter() - t0}
        if rank == 0:
            print(f"{name}: {len(probe.steps)} steps in {results[name]['seconds']:.0f} s", flush=True)
    if rank == 0:
        Path(result_dir, "comm.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def summarize(name: str, res: dict[str, Any]) -> dict[str, Any]:
    steps = res["steps"][1:] or res["steps"]       # the first step rebuilds DDP's buckets
    last = steps[-1]
    grad = {net: statistics.median(s["grad_bytes"].get(net, 0) for s in steps) for net in last["grad_bytes"]}
    if name == "progressive":                       # growing nets: the fully grown step
        grad = dict(last["grad_bytes"])
    small = {k: [statistics.median(s["small"][k][0] for s in steps), statistics.median(s["small"][k][1] for s in steps)]
             for k in last["small"]}
    return {"grad_bytes": grad, "grad_total": sum(grad.values()), "params": res["params"],
            "params_total": sum(res["params"].values()),
            "buckets": statistics.median(s["buckets"] for s in steps), "small": small,
            "measured_steps": len(steps), "seconds": res["seconds"]}


def flops_per_step(cfg_dict: dict[str, Any]) -> dict[str, float]:
    """FLOPs of one training step of the family's phases (forward and backward, every repeat), on
    one real batch, counted by torch.utils.flop_counter (convolutions and matrix products); nets
    fully grown for families that grow. In one process: what a GPU computes per step."""
    from torch.utils.flop_counter import FlopCounterMode

    from facegan.data.stream import ShardSet, train_loader
    from facegan.families.steps import StepContext
    from facegan.loop import data_info

    cfg = from_dict(RunConfig, cfg_dict)
    family = FAMILIES[cfg.model.family]
    shards = ShardSet.open(cfg.data.shards)
    data = data_info(cfg, shards)
    torch.manual_seed(0)
    nets = family.build_nets(cfg, data)
    steps = family.build_steps(cfg, data)
    kimg = 1e6   # past every stage
    steps.enter_stage(nets, steps.stage(kimg))
    for net in nets.values():
        net.train()
    batch = next(train_loader(shards, batch_size=BATCH, num_workers=0, seed=0))
    ctx = StepContext(nets=nets, batch={k: batch[k] for k in ("image", "attrs") if k in batch}, kimg=kimg,
                      generator=torch.Generator().manual_seed(0))
    images = 0
    with FlopCounterMode(display=False) as counter:
        for phase in family.phases(cfg):
            for _ in range(phase.repeat):
                images += BATCH if phase.uses_data else 0
                loss, _ = steps.run(phase.name, ctx)
                loss.backward()
                for net in nets.values():
                    net.zero_grad(set_to_none=True)
    return {"flops": float(counter.get_total_flops()), "images": images}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    ap.add_argument("--steps", type=int, default=3, help="steps per family (the first is not measured)")
    ap.add_argument("--out", help="write the per-family figures as JSON here")
    args = ap.parse_args()
    mib = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_shards(from_dict(ShardRecipe, {"source": "synthetic", "count": 800, "resolution": 64,
                                             "shard_size": 100, "seed": 1}), root=None, out=shards, progress=False)
        jobs = [(name, family_config(name, shards, Path(tmp) / name, 10 if name == "progressive" else args.steps))
                for name in args.families]
        mp.spawn(worker, args=(2, free_port(), jobs, tmp), nprocs=2, join=True)
        raw = json.loads((Path(tmp) / "comm.json").read_text())
        torch.set_num_threads(1)
        flops = {name: flops_per_step(cfg_dict) for name, cfg_dict in jobs}
    summary = {name: dict(summarize(name, raw[name]), **flops[name], batch=BATCH) for name in args.families}
    print(f"2 ranks, gloo, one step per row (median of {args.steps - 1} measured steps; progressive: fully grown)\n")
    print(f"{'family':<12} {'grad MiB/step':>13} {'params MiB':>10} {'ratio':>5} {'buckets':>7}  {'per net (MiB)':<40} "
          f"{'small collectives (count / bytes)'}")
    for name, s in summary.items():
        nets = ", ".join(f"{k} {v / mib:.2f}" for k, v in s["grad_bytes"].items())
        small = ", ".join(f"{k} {int(c)}/{int(b)}" for k, (c, b) in s["small"].items() if c)
        print(f"{name:<12} {s['grad_total'] / mib:13.2f} {s['params_total'] / mib:10.2f} "
              f"{s['grad_total'] / max(s['params_total'], 1):5.2f} {s['buckets']:7.0f}  {nets:<40} {small}")
    print(f"\n{'family':<12} {'GFLOP/step':>10} {'images/step':>11} {'GFLOP/image':>11}   (one rank, batch {BATCH}; "
          f"fwd + bwd of every phase)")
    for name, s in summary.items():
        print(f"{name:<12} {s['flops'] / 1e9:10.2f} {s['images']:>11} {s['flops'] / 1e9 / max(s['images'], 1):11.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
