"""Cheap metric reporting: accumulate per step without syncing, reduce across ranks once per tick.

    stats = Stats()
    stats.add({"loss/d": loss_d.detach(), ...})      # every step: no .item(), no host sync
    means = stats.reduce()                           # at a tick: one all-reduce over ranks
    for sink in sinks: sink.log(means, step=...)     # sinks exist on rank 0 only

Sinks: `JsonlSink` (always on rank 0), `WandbSink` (the only place W&B is imported).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class Stats:
    """Running sums of scalar tensors since the last reduce; also keeps every step's values."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._steps: list[dict[str, torch.Tensor]] = []

    def add(self, scalars: dict[str, torch.Tensor | float]) -> None:
        row = {}
        for name, value in scalars.items():
            t = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._sums[name] = self._sums[name] + t if name in self._sums else t.clone()
            self._counts[name] = self._counts.get(name, 0) + 1
            row[name] = t
        self._steps.append(row)

    def pop_steps(self) -> list[dict[str, float]]:
        """This rank's per-step values since the last call, as floats (one host sync)."""
        if not self._steps:
            return []
        names = sorted({k for row in self._steps for k in row})
        flat = torch.stack([torch.stack([row.get(n, torch.tensor(float("nan"))).to("cpu") for n in names])
                            for row in self._steps]).tolist()
        self._steps = []
        return [dict(zip(names, vals)) for vals in flat]

    def reduce(self) -> dict[str, float]:
        """Means since the last reduce, averaged over ranks. Every rank must call it (same keys)."""
        names = sorted(self._sums)
        if not names:
            return {}
        device = next(iter(self._sums.values())).device
        vec = torch.stack([self._sums[n].to(device) / self._counts[n] for n in names])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and vec.device.type != "cuda":
                vec = vec.cuda()
            dist.all_reduce(vec)
            vec = vec / dist.get_world_size()
        self._sums, self._counts = {}, {}
        return dict(zip(names, vec.cpu().tolist()))


class JsonlSink:
    """Appends one JSON object per line: per-step losses, and tick summaries (kind: tick)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        self.log_rows([dict(metrics, kind="tick", step=step)])

    def close(self) -> None:
        pass


class WandbSink:
    """One W&B run per job, from rank 0. Offline unless the user configured a key and mode."""

    def __init__(self, *, project: str, config: dict[str, Any], out_dir: Path, mode: str = "auto",
                 entity: str = "", group: str = "", name: str = "", run_id: str | None = None) -> None:
        if mode == "auto":
            # Online only when the user configured it (a key, or WANDB_MODE=online); anything
            # else stays on this machine.
            has_key = bool(os.environ.get("WANDB_API_KEY"))
            mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
        if mode in ("offline", "disabled"):
            # wandb's process-wide analytics (OpenTelemetry probe) and Sentry error reporting
            # read the environment, not init(mode=...): without these an offline run still
            # dials wandb's servers when it finishes.
            os.environ["WANDB_MODE"] = mode
            os.environ["WANDB_ERROR_REPORTING"] = "false"
        elif os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # wandb rejects an empty mode
        import wandb

        if mode in ("offline", "disabled"):
            try:
                from wandb.analytics.opentelemetry import opentelemetry_proxy

                opentelemetry_proxy.disable()
            except (ImportError, AttributeError):
                pass
        self.wandb = wandb
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity or None, group=group or None, name=name or None,
                              config=config, dir=str(out_dir), mode=mode, id=run_id, resume="allow",
                              settings=wandb.Settings(silent=True, x_disable_stats=True))
        self.mode = mode

    @property
    def run_dir(self) -> str:
        return str(self.run.dir) if self.run is not None else ""

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        data: dict[str, Any] = dict(metrics)
        for key, path in (images or {}).items():
            data[key] = self.wandb.Image(str(path))
        self.run.log(data, step=step)

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        pass  # per-step rows stay in the JSON-lines file; W&B gets tick means

    def close(self) -> None:
        self.run.finish()


def save_loss_arrays(rows: list[dict[str, float]], directory: Path, *, epoch: int) -> Path:
    """Per-epoch loss arrays as .npy (one file per epoch, columns named in a sidecar)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
    arr = np.array([[row.get(n, np.nan) for n in names] for row in rows], dtype=np.float32)
    path = directory / f"epoch_{epoch:04d}.npy"
    np.save(path, arr)
    (directory / "columns.json").write_text(json.dumps(names))
    return path


def plot_loss_curves(jsonl: Path, out_png: Path) -> None:
    """Loss-curve PNG from the per-step JSON-lines file (D and G losses, D(x), D(G(z)))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "step"]
    if not rows:
        return
    x = [r["kimg"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in ("loss/d", "loss/g"):
        axes[0].plot(x, [r.get(key, np.nan) for r in rows], label=key, linewidth=0.8)
    axes[0].set_xlabel("kimg")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for key in ("D(x)", "D(G(z))"):
        axes[1].plot(x, [r.get(key, np.nan) for r in rows], label=key, linewidth=0.8)
    axes[1].set_xlabel("kimg")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
