"""The fast path of the training loop, on CPU: no host sync inside a step, skipped steps decided on
the device, and the switches a GPU run uses (fused Adam, channels_last, bf16 autocast, compile, DDP
bucket options), each shown to train, resume exactly and really be applied.

    .venv/bin/python -m pytest tests/test_perf.py -q            # + -m slow: compile, 2-rank gloo
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import REPO
from facegan.checkpoint import list_checkpoints, load_checkpoint
from facegan.config import ConfigError, RayConfig, from_dict, to_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.dcgan import DCGAN
from facegan.hooks import Hooks
from facegan.loop import device_batch, train
from facegan.stats import Stats

BATCH = 8
STEP_KIMG = BATCH / 1000          # one rank


def tiny_cfg(shards: Path, out: Path, *, steps: int, **sections: dict[str, Any]) -> RunConfig:
    """A 32 px DCGAN with 8 base channels, `steps` steps of 8 images; one tick and one checkpoint
    at the end unless sections say otherwise."""
    data = {
        "data": {"shards": str(shards), "batch_size": BATCH, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": steps * STEP_KIMG, "tick_kimg": 100, "checkpoint_kimg": 100, "ema_kimg": 0.05,
                  "out_dir": str(out), "num_threads": 1, "grid_size": 4, "deterministic": True},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = dict(data.get(name, {}), **values)
    return from_dict(RunConfig, data)


def last_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_checkpoint(list_checkpoints(out / "checkpoints")[-1])


def assert_same_nets(a: dict[str, Any], b: dict[str, Any], nets: tuple[str, ...] = ("G", "D", "G_ema")) -> None:
    for net in nets:
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")


def assert_resumes_exactly(shards: Path, tmp: Path, **sections: dict[str, Any]) -> None:
    """12 steps in one run == 6 steps, a checkpoint, and 6 more after resuming from it."""
    train(tiny_cfg(shards, tmp / "full", steps=12, **sections))
    train(tiny_cfg(shards, tmp / "split", steps=6, **sections))
    resumed = dict(sections, train=dict(sections.get("train", {}), resume="latest"))
    train(tiny_cfg(shards, tmp / "split", steps=12, **resumed))
    (a, _), (b, meta) = last_state(tmp / "full"), last_state(tmp / "split")
    assert meta["step"] == 12
    assert_same_nets(a, b)


class Recorder:
    """Hooks.wrap_model that wraps as the in-process default does and records, per net, what its
    forward saw: input memory format, output dtype, parameter layout."""

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.seen: dict[str, dict[str, Any]] = {}
        self.ddp_options: list[dict[str, Any]] = []

    def wrap(self, module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
        name = type(module).__name__
        self.ddp_options.append(ddp_options)

        def record(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            self.seen.setdefault(name, {}).update(
                input_channels_last=x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last),
                output_dtype=str(output.dtype),
                params_channels_last=all(p.is_contiguous(memory_format=torch.channels_last)
                                         for p in mod.parameters() if p.dim() == 4))

        if name not in self.modules:
            module.register_forward_hook(record)
        self.modules[name] = module
        return Hooks().wrap_model(module, device, **ddp_options)


# ============================================================ no host sync inside a step

SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def count_syncs(cfg: RunConfig, monkeypatch: pytest.MonkeyPatch) -> int:
    """Calls of tensor methods that read a value back to the host (a device sync on a GPU) while
    `train(cfg)` runs."""
    calls = [0]
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, **kwargs):
            calls[0] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        train(cfg)
    finally:
        monkeypatch.undo()
    return calls[0]


def test_steps_read_nothing_back_to_the_host(synthetic_shards: Path, tmp_path: Path, monkeypatch) -> None:
    """A step (two phases, finiteness checks, EMA, stats) adds no host read: 12 steps cost as many
    as 6 (one tick, one checkpoint each). With torch's default Adam the check reads each phase's flag."""
    syncs = {steps: count_syncs(tiny_cfg(synthetic_shards, tmp_path / f"r{steps}", steps=steps), monkeypatch)
             for steps in (6, 12)}
    assert syncs[12] == syncs[6], syncs
    unfused = {steps: count_syncs(tiny_cfg(synthetic_shards, tmp_path / f"u{steps}", steps=steps,
                                           train={"fused_adam": False}), monkeypatch) for steps in (6, 12)}
    assert unfused[12] - unfused[6] >= 6 * 2, unfused   # the test sees syncs where there are some


class _NaNFamily(DCGAN):
    """DCGAN whose D phase returns a NaN loss on chosen calls (`bad(call, rank)`)."""

    name = "nan_perf"

    def __init__(self, bad) -> None:
        self.bad = bad

    def build_steps(self, cfg, data):
        import torch.distributed as dist

        steps = super().build_steps(cfg, data)
        inner, calls, bad = steps.d, [0], self.bad
        rank = dist.get_rank() if dist.is_initialized() else 0

        def d(ctx):
            calls[0] += 1
            loss, sc = inner(ctx)
            return (loss * float("nan"), sc) if bad(calls[0], rank) else (loss, sc)

        steps.d = d
        return steps


def _only_last_step_bad(call: int, rank: int) -> bool:
    return call == 7


@pytest.fixture
def nan_family():
    def register(bad):
        FAMILIES["nan_perf"] = _NaNFamily(bad)
    yield register
    FAMILIES.pop("nan_perf", None)


def test_skipped_step_leaves_parameters_ema_and_adam_state(synthetic_shards, tmp_path, nan_family) -> None:
    """The device flag skips the update exactly: 7 steps whose 7th is non-finite end with the
    parameters, EMA parameters and Adam moments and step counts of the 6 good steps."""
    nan_family(_only_last_step_bad)
    six = train(tiny_cfg(synthetic_shards, tmp_path / "six", steps=6, model={"family": "nan_perf"}))
    seven = train(tiny_cfg(synthetic_shards, tmp_path / "seven", steps=7, model={"family": "nan_perf"}))
    assert six["bad_steps"] == 0 and seven["bad_steps"] == 1 and seven["step"] == 7
    (a, _), (b, meta) = last_state(tmp_path / "six"), last_state(tmp_path / "seven")
    assert meta["bad_steps"] == 1
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue   # the skipped step's forwards still moved batch-norm statistics, as before
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
    for opt in ("opt_G", "opt_D"):
        for i, s in a[opt]["state"].items():
            t = b[opt]["state"][i]
            assert float(t["step"]) == float(s["step"]) == 6.0
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(s[k], t[k], rtol=0, atol=0, msg=f"{opt}[{i}].{k}")
    # The losses logged: 7 step rows would hold the NaN; the skipped step is left out.
    rows = [json.loads(line) for line in (tmp_path / "seven" / "losses.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    tick = [r for r in rows if r["kind"] == "tick"][-1]
    assert math.isfinite(tick["loss/d"]) and tick["bad_steps"] == 1


def test_stats_read_back_once_and_average_good_steps(monkeypatch) -> None:
    stats = Stats()
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    stats.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)}, step=1, images_seen=8, ok=one)
    stats.add({"a": torch.tensor(float("nan")), "b": torch.tensor(5.0)}, step=2, images_seen=16, ok=zero)
    stats.add({"a": torch.tensor(3.0), "b": 6.0}, step=3, images_seen=24, ok=True)
    reads = [0]
    original = torch.Tensor.tolist

    def tolist(self):
        reads[0] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    rows = stats.pop_steps()
    means = stats.reduce()
    assert reads[0] == 1
    assert [(r.step, r.images_seen, r.ok) for r in rows] == [(1, 8, True), (2, 16, False), (3, 24, True)]
    assert rows[2].values == {"a": 3.0, "b": 6.0}
    assert means == {"a": 2.0, "b": 5.0}
    assert stats.pop_steps() == [] and stats.reduce() == {}


def test_device_batch_normalises_uint8_like_the_loader(synthetic_shards: Path) -> None:
    """The GPU path ships uint8 and normalises on the device: the same values bit for bit, layout kept."""
    from facegan.data.stream import ShardSet, train_loader

    shards = ShardSet.open(str(synthetic_shards))
    for channels_last in (False, True):
        floats = next(train_loader(shards, batch_size=8, num_workers=0, seed=1, channels_last=channels_last))
        raw = next(train_loader(shards, batch_size=8, num_workers=0, seed=1, normalize=False,
                                channels_last=channels_last))
        assert raw["image"].dtype == torch.uint8
        got = device_batch(raw, torch.device("cpu"), normalize=True)
        assert set(got) == {"image", "attrs"}
        assert torch.equal(got["image"], floats["image"]) and torch.equal(got["attrs"], floats["attrs"])
        assert got["image"].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_loader_workers_ship_uint8_and_the_main_process_normalises(synthetic_shards: Path) -> None:
    """With loader workers the stream hands uint8 over shared memory (a quarter of a float batch's
    pages) and TrainLoader normalises in this process: float batches equal, bit for bit and in
    layout, what the same workers' uint8 batches give with the stream's own arithmetic."""
    from facegan.data.stream import ShardSet, train_loader

    shards = ShardSet.open(str(synthetic_shards))
    for channels_last in (False, True):
        floats = train_loader(shards, batch_size=8, num_workers=2, seed=1, channels_last=channels_last)
        raws = train_loader(shards, batch_size=8, num_workers=2, seed=1, normalize=False,
                            channels_last=channels_last)
        assert floats.normalize_here and not floats.stream.normalize and not raws.normalize_here
        for _ in range(3):    # both workers' batches
            f, r = next(floats), next(raws)
            assert f["image"].dtype == torch.float32 and r["image"].dtype == torch.uint8
            assert f["key"] == r["key"]
            assert torch.equal(f["image"], r["image"].to(torch.float32) / 127.5 - 1.0)
            assert f["image"].is_contiguous(memory_format=torch.channels_last) == channels_last
            assert f["image"].is_contiguous() == (not channels_last)
            assert -1.0 <= float(f["image"].min()) and float(f["image"].max()) <= 1.0


# ============================================================ the switches

def test_fused_adam_switch_applied_and_resumed_across(synthetic_shards: Path, tmp_path: Path) -> None:
    """fused_adam false is torch's default Adam; a run resumed from it with fused Adam moves the
    step counts where fused Adam keeps them and trains on, exactly as an unfused resume would
    compute up to kernel rounding (it is a different kernel)."""
    out = tmp_path / "r"
    train(tiny_cfg(synthetic_shards, out, steps=4, train={"fused_adam": False}))
    state, _ = last_state(out)
    assert state["opt_G"]["param_groups"][0]["fused"] is None
    train(tiny_cfg(synthetic_shards, out, steps=8, train={"resume": "latest"}))
    state, meta = last_state(out)
    assert meta["step"] == 8
    group = state["opt_G"]["param_groups"][0]
    assert group["fused"] is True
    assert all(float(s["step"]) == 8.0 and s["step"].dtype == torch.float32 for s in state["opt_G"]["state"].values())
    # ... and an unfused run from the same checkpoint ends close to it (same maths, other kernels).
    other = tmp_path / "u"
    train(tiny_cfg(synthetic_shards, other, steps=4, train={"fused_adam": False}))
    train(tiny_cfg(synthetic_shards, other, steps=8, train={"fused_adam": False, "resume": "latest"}))
    b, _ = last_state(other)
    for k, v in state["G"].items():
        torch.testing.assert_close(v, b["G"][k], rtol=1e-3, atol=1e-5, msg=f"G.{k}")


def test_unfused_adam_resumes_exactly(synthetic_shards: Path, tmp_path: Path) -> None:
    assert_resumes_exactly(synthetic_shards, tmp_path, train={"fused_adam": False})


def test_channels_last_applied_and_resumes_exactly(synthetic_shards: Path, tmp_path: Path) -> None:
    rec = Recorder()
    train(tiny_cfg(synthetic_shards, tmp_path / "cl", steps=2, train={"channels_last": True}),
          hooks=Hooks(wrap_model=rec.wrap))
    assert rec.seen["DCGANDiscriminator"]["input_channels_last"]      # batches come channels_last
    assert rec.seen["DCGANDiscriminator"]["params_channels_last"]
    assert rec.seen["DCGANGenerator"]["params_channels_last"]
    state, _ = last_state(tmp_path / "cl")
    assert any(v.dim() == 4 and v.shape[1] > 1 and v.is_contiguous(memory_format=torch.channels_last)
               and not v.is_contiguous() for v in state["D"].values())
    # The switch really changes something: without it the batches are plain NCHW.
    plain = Recorder()
    train(tiny_cfg(synthetic_shards, tmp_path / "nchw", steps=1, train={"channels_last": False, "precision": "fp32"}),
          hooks=Hooks(wrap_model=plain.wrap))
    assert not plain.seen["DCGANDiscriminator"]["input_channels_last"]
    assert_resumes_exactly(synthetic_shards, tmp_path, train={"channels_last": True})


def test_bf16_autocast_on_cpu_when_asked(synthetic_shards: Path, tmp_path: Path, caplog) -> None:
    rec = Recorder()
    metrics = train(tiny_cfg(synthetic_shards, tmp_path / "bf16", steps=4, train={"precision": "bf16"}),
                    hooks=Hooks(wrap_model=rec.wrap))
    assert rec.seen["DCGANDiscriminator"]["output_dtype"] == "torch.bfloat16"
    assert rec.seen["DCGANGenerator"]["output_dtype"] == "torch.bfloat16"
    assert math.isfinite(metrics["loss/d"]) and metrics["bad_steps"] == 0
    state, _ = last_state(tmp_path / "bf16")
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["G"].values())   # master weights fp32
    # fp32 is fp32; fp16 falls back to fp32 with a warning.
    for precision, warned in (("fp32", False), ("fp16", True)):
        caplog.clear()
        rec = Recorder()
        with caplog.at_level(logging.WARNING, logger="facegan.runtime"):
            train(tiny_cfg(synthetic_shards, tmp_path / precision, steps=1, train={"precision": precision}),
                  hooks=Hooks(wrap_model=rec.wrap))
        assert rec.seen["DCGANDiscriminator"]["output_dtype"] == "torch.float32"
        assert not rec.seen["DCGANDiscriminator"]["input_channels_last"]      # channels_last auto: off in fp32
        assert ("needs CUDA" in caplog.text) == warned, caplog.text
    assert_resumes_exactly(synthetic_shards, tmp_path / "resume", train={"precision": "bf16"})


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_follows_the_cpu_and_the_family(synthetic_shards: Path, tmp_path: Path, monkeypatch,
                                                       has_bf16: bool) -> None:
    """precision auto + channels_last auto: bf16 and NHWC on a CPU with bf16 units, fp32 and NCHW on
    one without, fp32 for a family that opts out (its note in the run's record); config.json records
    what auto became, and the run resumes exactly."""
    from facegan import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    rec = Recorder()
    train(tiny_cfg(synthetic_shards, tmp_path / "auto", steps=2), hooks=Hooks(wrap_model=rec.wrap))
    want = "torch.bfloat16" if has_bf16 else "torch.float32"
    assert rec.seen["DCGANDiscriminator"]["output_dtype"] == want
    assert rec.seen["DCGANDiscriminator"]["input_channels_last"] == has_bf16
    assert rec.seen["DCGANGenerator"]["params_channels_last"] == has_bf16
    resolved = json.loads((tmp_path / "auto" / "config.json").read_text())["resolved"]
    assert resolved["precision"] == ("bf16" if has_bf16 else "fp32")
    assert resolved["channels_last"] is has_bf16
    assert ("has bf16 units" if has_bf16 else "no bf16 units") in resolved["why"]
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["train"]["precision"] == "auto"
    # A family that keeps fp32 on CPU does, and says why.
    monkeypatch.setattr(DCGAN, "cpu_bf16", False)
    monkeypatch.setattr(DCGAN, "cpu_bf16_note", "its samples degrade in bf16")
    rec = Recorder()
    train(tiny_cfg(synthetic_shards, tmp_path / "optout", steps=1), hooks=Hooks(wrap_model=rec.wrap))
    assert rec.seen["DCGANDiscriminator"]["output_dtype"] == "torch.float32"
    assert not rec.seen["DCGANDiscriminator"]["input_channels_last"]
    resolved = json.loads((tmp_path / "optout" / "config.json").read_text())["resolved"]
    assert resolved["precision"] == "fp32"
    if has_bf16:
        assert "dcgan keeps fp32 on CPU (its samples degrade in bf16)" in resolved["why"]
    monkeypatch.undo()
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert_resumes_exactly(synthetic_shards, tmp_path / "resume")


def _precision_rank(rank: int, world: int, has_bf16: list[bool]) -> None:
    from facegan import runtime
    from facegan.config import TrainConfig

    runtime.cpu_has_bf16 = lambda: has_bf16[rank]
    prec = runtime.agree_precision(runtime.resolve_precision(TrainConfig(), torch.device("cpu")))
    assert (prec.amp_dtype, prec.channels_last) == ((torch.bfloat16, True) if has_bf16[0] else (None, False)), rank


@pytest.mark.parametrize("has_bf16", [[True, False], [False, True]])
def test_ranks_take_rank0s_precision(tmp_path: Path, has_bf16: list[bool]) -> None:
    """Ranks on CPUs that resolve `auto` differently (one with bf16 units, one without) all compute
    the way rank 0 does: DDP ranks must."""
    from ranks import run_ranks

    run_ranks(_precision_rank, has_bf16, store=tmp_path / "pg")


@pytest.mark.slow
def test_compile_applied_and_resumes_exactly(synthetic_shards: Path, tmp_path: Path) -> None:
    """torch.compile (inductor's C++ backend on CPU): the nets run compiled, checkpoints keep their
    keys, and a resumed run recompiles and continues bit for bit."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rec = Recorder()
    train(tiny_cfg(synthetic_shards, tmp_path / "c", steps=2, train={"compile": True}), hooks=Hooks(wrap_model=rec.wrap))
    assert all(m._compiled_call_impl is not None for m in rec.modules.values())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    state, _ = last_state(tmp_path / "c")
    assert not any("_orig_mod" in k for k in state["G"])
    assert_resumes_exactly(synthetic_shards, tmp_path, train={"compile": True})


def test_ray_section_ddp_options() -> None:
    assert RayConfig().ddp_options() == {}
    rc = from_dict(RayConfig, {"ddp_bucket_cap_mb": 2, "ddp_gradient_as_bucket_view": True})
    assert rc.ddp_options() == {"bucket_cap_mb": 2.0, "gradient_as_bucket_view": True}
    for bad in (0, -1, 5000):
        with pytest.raises(ConfigError, match="ray.ddp_bucket_cap_mb"):
            from_dict(RayConfig, {"ddp_bucket_cap_mb": bad})


def test_ddp_options_reach_ray_prepare_model(monkeypatch) -> None:
    """Ray's wrap hands the run's DDP options to prepare_model as parallel_strategy_kwargs."""
    import ray.train.torch

    from facegan.launch.trainer import _wrap_model

    calls = []
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda m, **kw: calls.append(kw) or m)
    net = nn.Linear(2, 2)
    assert _wrap_model(net, torch.device("cpu"), bucket_cap_mb=1.0, gradient_as_bucket_view=True) is net
    assert _wrap_model(net, torch.device("cpu")) is net
    assert calls == [
        {"move_to_device": False, "parallel_strategy": "ddp",
         "parallel_strategy_kwargs": {"bucket_cap_mb": 1.0, "gradient_as_bucket_view": True}},
        {"move_to_device": False, "parallel_strategy": "ddp", "parallel_strategy_kwargs": None}]


def test_bench_gpu_exits_cleanly_without_cuda(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


# ============================================================ two ranks (gloo)

def _nan_on_rank1_step3(call: int, rank: int) -> bool:
    return rank == 1 and call == 3


class _CommCounter:
    """Bytes each net's DDP all-reduces, through a comm hook on the wrap the loop asks for."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.wrapped: list[nn.Module] = []

    def wrap(self, module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp = Hooks().wrap_model(module, device, **ddp_options)
        name = type(module).__name__.removeprefix("DCGAN")

        def hook(state, bucket):
            buf = bucket.buffer()
            self.bytes[name] = self.bytes.get(name, 0) + buf.numel() * buf.element_size()
            return default_hooks.allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        self.wrapped.append(ddp)
        return ddp


def _ddp_worker(rank: int, world: int, cfg_dict: dict, result_dir: str) -> None:
    FAMILIES["nan_perf"] = _NaNFamily(_nan_on_rank1_step3)
    counter = _CommCounter()
    cfg = from_dict(RunConfig, cfg_dict)
    metrics = train(cfg, hooks=Hooks(rank=rank, world_size=world, wrap_model=counter.wrap))
    params = {type(m.module).__name__: [p.detach().clone() for p in m.module.parameters()] for m in counter.wrapped}
    torch.save({"metrics": metrics, "bytes": counter.bytes, "params": params,
                "buckets": [(m.bucket_bytes_cap, m.gradient_as_bucket_view) for m in counter.wrapped]},
               Path(result_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_skip_one_ranks_nan_together_with_ddp_options(synthetic_shards: Path, tmp_path: Path,
                                                              nan_family) -> None:
    """Rank 1 alone gets a NaN loss at step 3: both ranks skip it (the flag is all-reduced on the
    device), count it, and end with identical parameters; DDP got the run's bucket options; D's
    gradients are all-reduced once per step (not again in G's phase, which does not step D)."""
    from ranks import run_ranks

    from facegan.families.dcgan.nets import build_dcgan

    nan_family(_nan_on_rank1_step3)
    steps = 5
    cfg = tiny_cfg(synthetic_shards, tmp_path / "ddp", steps=2 * steps, model={"family": "nan_perf"},
                   ray={"ddp_bucket_cap_mb": 1, "ddp_gradient_as_bucket_view": True})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["metrics"]["step"] == r1["metrics"]["step"] == steps
    assert r0["metrics"]["bad_steps"] == r1["metrics"]["bad_steps"] == 1
    for name in r0["params"]:
        for a, b in zip(r0["params"][name], r1["params"][name]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert r0["buckets"] == [(2**20, True), (2**20, True)]
    nets = build_dcgan(resolution=32, z_dim=16, base_channels=8)
    size = {name: sum(p.numel() * p.element_size() for p in nets[key].parameters())
            for key, name in (("G", "Generator"), ("D", "Discriminator"))}
    assert r0["bytes"] == {name: steps * n for name, n in size.items()}


def test_scaling_model_reads_bench_comm_json_and_follows_its_model(tmp_path: Path) -> None:
    """benchmarks/scaling_model.py on a hand-made bench_comm JSON: compute-bound and network-bound
    families come out as the model says (efficiency 1 when the all-reduce hides, < 1 otherwise)."""
    comm = {"heavy": {"grad_total": 1e6, "buckets": 1, "flops": 8 * 40e9, "images": 8, "batch": 8},
            "light": {"grad_total": 100e6, "buckets": 4, "flops": 8 * 1e9, "images": 8, "batch": 8}}
    path = tmp_path / "comm.json"
    path.write_text(json.dumps(comm))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling_model.py"), "--comm", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| heavy") or line.startswith("| light")}
    assert [float(x) for x in rows["heavy"][-5:]] == [1.0] * 5
    light = [float(x) for x in rows["light"][-5:]]
    assert light[0] == 1.0 and all(0 < e < 1 for e in light[1:]) and light[2] > light[1]   # 400 beats 100 Gb/s
    # 128 images of 1 GFLOP at 200 TFLOP/s is 0.64 ms: the 1 ms floor sets the step.
    assert rows["light"][2] == "1.00" and rows["light"][3] == "128,000"


def test_readme_precision_table_covers_every_family_and_matches_cpu_bf16() -> None:
    """The README's per-family bf16 check (benchmarks/bench_precision.py on real faces) is what
    `train.precision: auto` follows: every registered family has a row, and exactly the families
    whose verdict is "degraded" keep fp32 on CPU, with a note saying why."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| family | fp32 s | bf16 s | speed-up |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split()[0].strip("`")] = cells[-1]
    assert set(rows) == set(FAMILIES), sorted(set(FAMILIES) ^ set(rows))
    for name, verdict in rows.items():
        family = FAMILIES[name]
        assert family.cpu_bf16 == (not verdict.startswith("degraded")), (name, verdict)
        assert bool(family.cpu_bf16_note) == (not family.cpu_bf16), name
