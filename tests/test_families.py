"""Every family in the registry, the same checks: build, a CPU step, a checkpoint round trip with
exact resume, sampling, and steps of 2-rank DDP on gloo with parameters identical across ranks.

A family joins these tests by being in `facegan.families.FAMILIES` (its `smoke` sections make it
tiny); nothing here names a family.

    .venv/bin/python -m pytest -q tests/test_families.py
"""

from __future__ import annotations

import json
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


# Every kind of augmentation a family takes, besides none: one CPU step, exact resume and the 2-rank
# DDP step each (DiffAugment: each rank its own draws; ADA: the per-sample gate and p from r_t
# averaged over ranks; R1's double backward where the family has it).
AUGMENT_CASES = [(name, kind) for name in NAMES for kind in FAMILIES[name].augment_kinds if kind != "none"]


def augment_sections(name: str, kind: str) -> dict[str, dict[str, Any]]:
    """The run-config sections of an augmented test run: with ada, p starts at 0.5 and moves by 0.1
    every 2 steps of 8 images (3 moves in 6 steps: it cannot end at 0.5); families with R1 take it
    every other step (the steps with and without its double backward)."""
    sections: dict[str, dict[str, Any]] = {"augment": {"kind": kind}}
    if kind == "ada":
        sections["augment"].update(p=0.5, interval=2, speed_kimg=0.16)
    return {**sections, **r1_sections(name)}


def r1_sections(name: str) -> dict[str, dict[str, Any]]:
    """Families with R1 take it every other step in the test runs (the steps with and without its
    double backward), so every metric they declare (loss/r1 too) is reported."""
    if "r1_gamma" not in section_fields(FAMILIES[name])["gan"].__dataclass_fields__:
        return {}
    return {"gan": {**FAMILIES[name].smoke.get("gan", {}), "r1_gamma": 1.0, "r1_interval": 2}}


def check_exact_resume(name: str, shards: Path, root: Path, **sections: dict[str, Any]) -> tuple[RunConfig, dict]:
    """A run of 6 steps and the same run stopped after 3 and resumed end in the same tensors (nets,
    EMA, optimizer moments, family and augmentation state). Returns the config and the last metrics."""
    full = family_cfg(name, shards, root / "full", **sections)
    metrics = train(full)
    assert metrics["images_seen"] >= 48
    # What a family declares is what its run reports: sweeps and Tune trust `metrics` as objectives.
    missing = sorted(set(FAMILIES[name].metrics) - set(metrics))
    assert not missing, f"{name}: declared metrics that its phases and ticks never report: {missing}"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k in FAMILIES[name].metrics)
    train(family_cfg(name, shards, root / "split", **{**sections, "train": {"total_kimg": 0.024}}))
    train(family_cfg(name, shards, root / "split", **{**sections, "train": {"resume": "latest"}}))
    a, meta_a = final_state(root / "full")
    b, meta_b = final_state(root / "split")
    assert meta_a["step"] == meta_b["step"] and meta_a["images_seen"] == meta_b["images_seen"]
    for key, value in a.items():
        if key in ("rng", "scaler") or key.startswith("opt_"):
            continue
        if isinstance(value, dict):
            assert set(value) == set(b[key]), (name, key)
            for k, t in value.items():
                if isinstance(t, torch.Tensor):
                    torch.testing.assert_close(t, b[key][k], rtol=0, atol=0, msg=f"{name}: {key}.{k}")
                else:
                    assert t == b[key][k], (name, key, k)
    for key in (k for k in a if k.startswith("opt_")):
        for pid, s in a[key]["state"].items():
            for k, t in s.items():
                torch.testing.assert_close(t, b[key]["state"][pid][k], rtol=0, atol=0, msg=f"{name}: {key}")
    return full, metrics


@pytest.mark.parametrize("name", NAMES)
def test_family_steps_resumes_exactly_and_samples(name: str, synthetic_shards: Path, tmp_path: Path) -> None:
    full, _ = check_exact_resume(name, synthetic_shards, tmp_path, **r1_sections(name))
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
@pytest.mark.parametrize("name, kind", [(name, "none") for name in NAMES] + AUGMENT_CASES)
def test_family_two_rank_ddp_keeps_ranks_identical(name: str, kind: str, synthetic_shards: Path,
                                                   tmp_path: Path) -> None:
    # 3 steps of 2 x 8 images: an unused parameter would raise in DDP's reducer at step 2. Each rank
    # draws its own augmentations; ADA's p comes from r_t averaged over ranks.
    sections = augment_sections(name, kind) if kind != "none" else {}
    cfg = family_cfg(name, synthetic_shards, tmp_path / "ddp", **sections,
                     train={"total_kimg": 0.048, "tick_kimg": 0.048, "checkpoint_kimg": 0.048})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "params.pt", weights_only=True)
    assert got["rank0"].numel() > 0
    torch.testing.assert_close(got["rank0"], got["rank1"], rtol=0, atol=0)
    state, meta = final_state(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 3
    # The family's own state (k_t, noise levels, growth stage) agrees across ranks too: rank 0 wrote it
    # from the same all-reduced statistics every rank used (checked in each family's own tests).


@pytest.mark.parametrize("name, kind", AUGMENT_CASES)
def test_family_with_augmentation_resumes_exactly(name: str, kind: str, synthetic_shards: Path,
                                                  tmp_path: Path) -> None:
    _, metrics = check_exact_resume(name, synthetic_shards, tmp_path, **augment_sections(name, kind))
    state, _ = final_state(tmp_path / "full")
    if kind == "ada":
        # p moved (0.5 +- 0.1 three times), was checkpointed, restored exactly (check_exact_resume
        # compares state["augment"]) and reported per tick and per step, for loss_curve.png.
        p = float(state["augment"]["p"])
        assert p != pytest.approx(0.5) and p == pytest.approx(metrics["augment_p"])
        rows = [json.loads(line) for line in (tmp_path / "full" / "losses.jsonl").read_text().splitlines()]
        assert {r["augment_p"] for r in rows if r["kind"] == "step"} >= {0.5, p}
    else:
        assert state["augment"] == {} and "augment_p" not in metrics
    if "r1_gamma" in augment_sections(name, kind).get("gan", {}):
        rows = [json.loads(line) for line in (tmp_path / "full" / "losses.jsonl").read_text().splitlines()]
        r1 = [r.get("loss/r1") for r in rows if r["kind"] == "step"]
        assert all(v is not None and v > 0 for v in r1[0::2]) and all(v is None for v in r1[1::2]), r1
