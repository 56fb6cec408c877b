"""Every family in the registry, the same checks: build, a CPU step, a checkpoint round trip with
exact resume, sampling, and steps of 2-rank DDP on gloo with parameters identical across ranks.

A family joins these tests by being in `facegan.families.FAMILIES` (its `smoke` sections make it
tiny); nothing here names a family.

    .venv/bin/python -m pytest -q tests/test_families.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from facegan.checkpoint import list_checkpoints, load_checkpoint
from facegan.config import from_dict, to_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import section_fields
from facegan.hooks import Hooks
from facegan.loop import train

from ranks import run_ranks

NAMES = sorted(FAMILIES)


def family_cfg(name: str, shards: Path, out: Path, **sections: dict[str, Any]) -> RunConfig:
    family = FAMILIES[name]
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 64},
        "train": {"total_kimg": 0.048, "tick_kimg": 0.024, "checkpoint_kimg": 0.024, "out_dir": str(out),
                  "num_threads": 1, "deterministic": True},
        "wandb": {"enabled": False},
    }
    if "grid_size" in {f for f in section_fields(family)["train"].__dataclass_fields__}:
        data["train"]["grid_size"] = 4
    for section, values in family.smoke.items():
        data[section] = {**data.get(section, {}), **values}
    data["model"] = {**data.get("model", {}), "family": name}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return from_dict(RunConfig, data)


def final_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_checkpoint(list_checkpoints(out / "checkpoints")[-1])


@pytest.mark.parametrize("name", NAMES)
def test_family_declares_a_consistent_protocol(name: str, synthetic_shards: Path, tmp_path: Path) -> None:
    family = FAMILIES[name]
    cfg = family_cfg(name, synthetic_shards, tmp_path)
    phases, opts = family.phases(cfg), family.optimizers(cfg)
    assert phases and {p.opt for p in phases} <= set(opts), (phases, opts)
    from facegan.loop import data_info
    from facegan.data.stream import ShardSet

    torch.manual_seed(0)
    nets = family.build_nets(cfg, data_info(cfg, ShardSet.open(str(synthetic_shards))))
    for spec in opts.values():
        assert set(spec.nets) <= set(nets)
    # Every parameter is stepped by some optimizer, and no optimizer steps a frozen net.
    stepped = {id(p) for spec in opts.values() for n in spec.nets for p in nets[n].parameters()}
    assert stepped == {id(p) for net in nets.values() for p in net.parameters() if p.requires_grad}
    assert (family.generator is None) == (family.ema is None) or family.ema in nets
    for metric in family.metrics:
        assert isinstance(metric, str) and metric


@pytest.mark.parametrize("name", NAMES)
def test_family_steps_resumes_exactly_and_samples(name: str, synthetic_shards: Path, tmp_path: Path) -> None:
    full = family_cfg(name, synthetic_shards, tmp_path / "full")
    metrics = train(full)
    assert metrics["images_seen"] >= 48
    # What a family declares is what its run reports: sweeps and Tune trust `metrics` as objectives.
    missing = sorted(set(FAMILIES[name].metrics) - set(metrics))
    assert not missing, f"{name}: declared metrics that its phases and ticks never report: {missing}"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k in FAMILIES[name].metrics)
    train(family_cfg(name, synthetic_shards, tmp_path / "split", train={"total_kimg": 0.024}))
    train(family_cfg(name, synthetic_shards, tmp_path / "split", train={"resume": "latest"}))
    a, meta_a = final_state(tmp_path / "full")
    b, meta_b = final_state(tmp_path / "split")
    assert meta_a["step"] == meta_b["step"] and meta_a["images_seen"] == meta_b["images_seen"]
    for key, value in a.items():
        if key in ("rng", "scaler") or key.startswith("opt_"):
            continue
        if isinstance(value, dict):
            for k, t in value.items():
                if isinstance(t, torch.Tensor):
                    torch.testing.assert_close(t, b[key][k], rtol=0, atol=0, msg=f"{name}: {key}.{k}")
                else:
                    assert t == b[key][k], (name, key, k)
    for key in (k for k in a if k.startswith("opt_")):
        for pid, s in a[key]["state"].items():
            for k, t in s.items():
                torch.testing.assert_close(t, b[key]["state"][pid][k], rtol=0, atol=0, msg=f"{name}: {key}")

    family = FAMILIES[name]
    if family.generator is not None:
        from facegan.families.loading import load_generator

        gen = load_generator(tmp_path / "full")
        img = gen.sample(3, seed=1)
        assert img.shape == (3, 3, *full.model.size) and img.abs().max() <= 1 + 1e-6
        torch.testing.assert_close(img, gen.sample(3, seed=1))
    else:
        from facegan.families.classifier.scoring import load_classifier

        net = load_classifier(tmp_path / "full")
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, len(net.attr_names))


def _ddp_worker(rank: int, world: int, cfg_dict: dict, result_dir: str) -> None:
    """One rank of `train` under DDP (started by ranks.run_ranks); rank 0 saves every rank's
    parameters to result_dir/params.pt."""
    import torch.distributed as dist

    cfg = from_dict(RunConfig, cfg_dict)
    wrapped: dict[str, torch.nn.Module] = {}

    def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        # DDP as Ray's prepare_model makes it: find_unused_parameters=False, so a parameter that a
        # phase leaves without a gradient raises at the next step instead of passing silently.
        ddp = torch.nn.parallel.DistributedDataParallel(module)
        wrapped[str(len(wrapped))] = module
        return ddp

    train(cfg, hooks=Hooks(rank=rank, world_size=world, wrap_model=wrap))
    # Parameters only: batch-norm running statistics are rank 0's after DDP's broadcast at each
    # forward, then updated from the rank's own batch, so they differ by the last step's update.
    flat = torch.cat([p.detach().flatten() for m in wrapped.values() for p in m.parameters()])
    everyone = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    if rank == 0:
        torch.save({"rank0": everyone[0], "rank1": everyone[1]}, Path(result_dir) / "params.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_family_two_rank_ddp_keeps_ranks_identical(name: str, synthetic_shards: Path, tmp_path: Path) -> None:
    # 3 steps of 2 x 8 images: an unused parameter would raise in DDP's reducer at step 2.
    cfg = family_cfg(name, synthetic_shards, tmp_path / "ddp", train={"total_kimg": 0.048, "tick_kimg": 0.048,
                                                                      "checkpoint_kimg": 0.048})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "params.pt", weights_only=True)
    assert got["rank0"].numel() > 0
    torch.testing.assert_close(got["rank0"], got["rank1"], rtol=0, atol=0)
    state, meta = final_state(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 3
    # The family's own state (k_t, noise levels, growth stage) agrees across ranks too: rank 0 wrote it
    # from the same all-reduced statistics every rank used (checked in each family's own tests).
