"""Cheap metric reporting: per-step scalars stay on the device, read back once per tick.

    stats = Stats()
    stats.add({"loss/d": loss_d.detach(), ...}, step=step, images_seen=n, ok=ok_flag)  # every step: no device work
    rows = stats.pop_steps()                         # at a tick: every step since, one host sync for all
    means = stats.reduce()                           # then: means over good steps, one all-reduce over ranks
    for sink in sinks: sink.log(means, step=...)     # sinks exist on rank 0 only

Sinks (`Sink`): `JsonlSink` (always on rank 0), `ProgressSink` (the terminal line); the W&B sink lives
in facegan.launch.sinks (W&B only under launch/).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from facegan.errors import OutputError


@dataclass(frozen=True)
class StepRow:
    """One step's scalars as floats; `ok` is False for a skipped (non-finite) step."""

    step: int
    images_seen: int
    ok: bool
    values: dict[str, float]


class Stats:
    """Each step's scalars (0-dim tensors where the phases left them, or floats) and its finiteness
    flag (a device tensor or a bool), kept as they are until a tick: adding costs no kernel launch
    and no host sync; `pop_steps` and `reduce` read everything pending with one device-to-host copy."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, torch.Tensor | bool, dict[str, torch.Tensor | float]]] = []
        self._rows: list[StepRow] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, scalars: dict[str, torch.Tensor | float], *, step: int = 0, images_seen: int = 0,
            ok: torch.Tensor | bool = True) -> None:
        self._pending.append((step, images_seen, ok, dict(scalars)))

    def _flush(self) -> None:
        """Pending steps to host rows (one copy for all of them); good steps into the running sums."""
        if not self._pending:
            return
        tensors = [t for _, _, ok, scalars in self._pending
                   for t in ([ok] if isinstance(ok, torch.Tensor) else []) + list(scalars.values())
                   if isinstance(t, torch.Tensor)]
        values: list[float] = []
        if tensors:
            device = tensors[0].device
            values = torch.stack([t.detach().reshape(()).to(device=device, dtype=torch.float32)
                                  for t in tensors]).tolist()
        it = iter(values)
        for step, images_seen, ok, scalars in self._pending:
            good = next(it) > 0 if isinstance(ok, torch.Tensor) else bool(ok)
            row = {name: next(it) if isinstance(v, torch.Tensor) else float(v) for name, v in scalars.items()}
            self._rows.append(StepRow(step=step, images_seen=images_seen, ok=good, values=row))
            if good:
                for name, v in row.items():
                    self._sums[name] = self._sums.get(name, 0.0) + v
                    self._counts[name] = self._counts.get(name, 0) + 1
        self._pending = []

    def pop_steps(self) -> list[StepRow]:
        """Every step added since the last call, in order, skipped ones too (ok=False)."""
        self._flush()
        rows, self._rows = self._rows, []
        return rows

    def reduce(self) -> dict[str, float]:
        """Means over the good steps since the last reduce, averaged over ranks. Every rank must
        call it, with the same keys (the steps' flags are agreed across ranks, so they are)."""
        self._flush()
        names = sorted(self._sums)
        if not names:
            return {}
        means = [self._sums[n] / self._counts[n] for n in names]
        self._sums, self._counts = {}, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            vec = torch.tensor(means, dtype=torch.float64,
                               device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(vec)
            means = (vec / dist.get_world_size()).cpu().tolist()
        return dict(zip(names, means))


@runtime_checkable
class Sink(Protocol):
    """Where a run's metrics go, on rank 0 (`facegan.hooks.Hooks.sinks`, besides the loop's JsonlSink).
    The loop calls, in this order over a run:

    progress(images_seen)         after every step (keep it cheap: a no-op, or a counter)
    log_rows(rows)                per-step rows at ticks, epoch ends and checkpoints: dicts of floats
                                  with kind="step", step, kimg
    log(metrics, step=, images=)  the tick's reduced metrics, and its grid PNGs by name
    close()                       once, when training ends
    """

    def progress(self, images_seen: int) -> None: ...

    def log_rows(self, rows: list[dict[str, Any]]) -> None: ...

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per line: per-step losses, and tick summaries (kind: tick)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A line a killed writer cut short stays alone on its line (readers skip it): the next row
        # must not be glued to it and lost with it.
        self.torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                self.torn = f.read(1) != b"\n"

    def progress(self, images_seen: int) -> None:
        pass

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        text = "\n" * self.torn + "".join(json.dumps(row) + "\n" for row in rows)
        try:
            with open(self.path, "a") as f:
                f.write(text)   # one write: a kill can cut at most the last line, which readers skip
            self.torn = False
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}; the checkpoints written so "
                                  "far are intact (free space, then resume with train.resume: latest)") from None

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        self.log_rows([dict(metrics, kind="tick", step=step)])

    def close(self) -> None:
        pass


class ProgressSink:
    """One updating terminal line for a run: kimg of the total, img/s, ETA and the main scalars.

    The loop calls `progress(images_seen)` every step (cheap: tqdm redraws at most twice a second)
    and `log(metrics)` at ticks (the losses shown). Rank 0 only, like every sink.
    """

    def __init__(self, *, total_kimg: float, desc: str = "train", start_kimg: float = 0.0,
                 keys: tuple[str, ...] = (), file: Any = None) -> None:
        self.keys, self.total, self.desc, self.file = keys, round(total_kimg, 3), desc, file
        self._bar: Any = None   # made at the first step: an error before training prints no empty bar

    @property
    def bar(self) -> Any:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="kimg", desc=self.desc, dynamic_ncols=True, mininterval=0.5,
                             file=self.file,
                             bar_format="{desc} {n:.2f}/{total:.2f} kimg |{bar}| {elapsed}<{remaining}{postfix}")
        return self._bar

    def progress(self, images_seen: int) -> None:
        # The last step may pass total_kimg by less than a batch: the bar stops at its total. The
        # position is set, not summed from float increments (a sum drifted past the total: tqdm's
        # "clamping frac" warning and a negative ETA at the end of the demo).
        bar = self.bar
        target = min(images_seen / 1000, bar.total)
        if target > bar.n:
            bar.update(target - bar.n)
            bar.n = target

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        pass

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        self.progress(int(round(metrics.get("kimg", 0.0) * 1000)))
        shown = {"img/s": f"{metrics.get('img_per_sec', 0):.0f}"}
        keys = self.keys or tuple(k for k in sorted(metrics) if k.startswith("loss/"))[:4]
        shown.update({k.removeprefix("loss/"): f"{metrics[k]:.3g}" for k in keys if k in metrics})
        self.bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a losses.jsonl as one uninterrupted run would have logged them.

    The log is append-only: a run restarted from a checkpoint (a resume, or Ray Train's fault
    recovery) logs again the steps after it, which the failed attempt may have logged already
    (identical values under exact resume). Here each (kind, step) row appears once, the last one
    written, in step order (a step's row before its tick's); a line cut short by a killed writer
    is skipped. Every reader of the log goes through this."""
    if not Path(path).is_file():
        return []
    kept: dict[Any, tuple[int, int, dict[str, Any]]] = {}
    step = 0
    for i, line in enumerate(Path(path).read_text().splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("step"), int):
            step, key = row["step"], (row.get("kind"), row["step"])
        else:
            key = i   # a row without a step stays where it stands
        kept[key] = (step, i, row)
    return [row for _, _, row in sorted(kept.values(), key=lambda t: (t[0], t[2].get("kind") != "step", t[1]))]


def plot_loss_curves(jsonl: Path, out_png: Path, *,
                     panels: tuple[tuple[str, ...], ...] = (("loss/d", "loss/g"), ("D(x)", "D(G(z))"))) -> None:
    """Loss-curve PNG from the per-step JSON-lines file: one panel per tuple of scalar names (a
    family's `curves`; BEGAN adds k_t and its convergence measure, the classifier its accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_log(jsonl) if r.get("kind") == "step"]
    panels = tuple(p for p in panels if any(k in r for r in rows for k in p))
    if not rows or not panels:
        return
    x = [r["kimg"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        for key in keys:
            ax.plot(x, [r.get(key, np.nan) for r in rows], label=key, linewidth=0.8)
        ax.set_xlabel("kimg")
        values = [r[k] for r in rows for k in keys if isinstance(r.get(k), (int, float))]
        if values and min(values) >= 0 and max(values) <= 1:
            ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
