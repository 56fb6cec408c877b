"""Weak-scaling efficiency of each family on paper, from bench_comm.py's measured bytes and FLOPs.

    .venv/bin/python benchmarks/bench_comm.py --out comm.json      # 2-rank gloo, ~1 min on CPU
    .venv/bin/python benchmarks/scaling_model.py --comm comm.json   # the table in docs/scaling.md

Model (every input is a flag; the defaults are stated assumptions, not measurements):
  step compute   t_c = max(FLOPs per step at per-GPU batch B / achieved FLOP/s, step floor)
  all-reduce     t_ar(N) = ring inside a node over NVLink, 2(n-1)/n * bytes / nvlink_bw (n = GPUs in
                 the node), plus across M = N/8 nodes 2(M-1)/M * bytes / nic_bw (one NIC of that speed
                 per node) and a tree latency buckets * 2*log2(M) * alpha
  exposed        max(0, t_ar - overlap * t_c)   (DDP overlaps bucket all-reduces with backward)
  efficiency     t_c / (t_c + exposed)
  data           loader cores per GPU = img/s * cores per img/s (bench_stream), storage MB/s per GPU =
                 img/s * shard bytes per image
Weak scaling: the per-GPU batch stays B, so t_c does not change with N; only t_ar grows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def efficiency(t_c: float, grad: float, buckets: float, n: int, *, nvlink: float, nic: float, gpus_per_node: int,
               overlap: float, alpha: float) -> float:
    in_node = min(n, gpus_per_node)
    t_ar = 2 * (in_node - 1) / in_node * grad / nvlink if in_node > 1 else 0.0
    nodes = math.ceil(n / gpus_per_node)
    if nodes > 1:
        t_ar += 2 * (nodes - 1) / nodes * grad / nic + buckets * 2 * math.log2(nodes) * alpha
    return t_c / (t_c + max(0.0, t_ar - overlap * t_c))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comm", required=True, help="bench_comm.py --out JSON")
    ap.add_argument("--batch", type=int, default=128, help="per-GPU batch B")
    ap.add_argument("--achieved-tflops", type=float, default=200, help="FLOP/s one GPU sustains (TFLOP/s)")
    ap.add_argument("--floor-ms", type=float, default=1.0, help="shortest possible step (kernel launches)")
    ap.add_argument("--nvlink-gbs", type=float, default=350, help="NCCL bus bandwidth inside a node (GB/s)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--overlap", type=float, default=0.6, help="share of compute that can hide the all-reduce")
    ap.add_argument("--alpha-us", type=float, default=10, help="per-hop latency across nodes (us)")
    ap.add_argument("--loader-cores-per-kimg", type=float, default=0.10, help="bench_stream: cores per 1000 img/s")
    ap.add_argument("--bytes-per-image", type=float, default=5.4e3, help="shard bytes per image")
    args = ap.parse_args()
    comm = json.loads(open(args.comm).read())
    nics = {"100 Gb/s": 10e9, "400 Gb/s": 40e9}   # achieved per node
    cols = [(8, "NVLink", 0.0)] + [(n, name, bw) for n in (64, 256) for name, bw in nics.items()]
    print("| family | grad MiB/step | GFLOP/image | step ms (B=%d) | img/s per GPU | loader cores/GPU | storage MB/s/GPU | "
          % args.batch + " | ".join(f"{n} GPUs {name}" for n, name, _ in cols) + " |")
    print("|---" * (7 + len(cols)) + "|")
    for fam, s in sorted(comm.items()):
        per_image = s["flops"] / s["images"]
        images = s["images"] / s["batch"] * args.batch          # images per step at batch B (n_critic included)
        t_c = max(per_image * images / (args.achieved_tflops * 1e12), args.floor_ms / 1e3)
        rate = images / t_c
        effs = [efficiency(t_c, s["grad_total"], s["buckets"], n, nvlink=args.nvlink_gbs * 1e9, nic=bw or 1.0,
                           gpus_per_node=args.gpus_per_node, overlap=args.overlap, alpha=args.alpha_us / 1e6)
                for n, _, bw in cols]
        print(f"| {fam} | {s['grad_total'] / 2**20:.1f} | {per_image / 1e9:.2f} | {t_c * 1e3:.2f} | {rate:,.0f} | "
              f"{rate / 1000 * args.loader_cores_per_kimg:.1f} | {rate * args.bytes_per_image / 1e6:.0f} | "
              + " | ".join(f"{e:.2f}" for e in effs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
