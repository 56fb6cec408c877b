"""InfoGAN family: the latent layout and building latents from codes, the info loss against hand
computations, Q and the noise-recovery head in D, the phases' gradient routing, traversal grids,
config checks, a tiny run whose Q must beat chance only with the info loss, DDP without the noise
head, a 2-worker Ray Train run, and the sweep file's grid.

    .venv/bin/python -m pytest tests/test_infogan.py -q
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from facegan.config import ConfigError, from_dict, to_dict
from facegan.errors import CheckpointError
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo
from facegan.families.infogan.codes import CONT_VARIANCE, LatentLayout, info_loss
from facegan.families.infogan.nets import InfoGANDiscriminator
from facegan.families.steps import StepContext

from conftest import REPO

FAMILY = FAMILIES["infogan"]


def run_cfg(shards: Path | str = "unused", out: Path | str = "runs/x", **sections: dict[str, Any]) -> RunConfig:
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "infogan", "resolution": 32, "z_dim": 8, "base_channels": 8, "cat_dim": 4, "cont_dim": 1,
                  "q_hidden": 16},
        "train": {"total_kimg": 0.64, "tick_kimg": 0.16, "checkpoint_kimg": 10, "num_threads": 1, "out_dir": str(out),
                  "grid_size": 4, "deterministic": True},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


# ============================================================================ the latent layout

def test_layout_samples_codes_from_their_priors_deterministically() -> None:
    lay = LatentLayout(z_dim=5, cat_dim=4, cont_dim=2)
    assert lay.dim == 11 and lay.code_dim == 6 and lay.code_names == ["cat", "c1", "c2"]
    lat = lay.sample(4000, generator=torch.Generator().manual_seed(0))
    z, cat, cont = lay.split(lat)
    assert lat.shape == (4000, 11)
    assert torch.equal(cat.sum(1), torch.ones(4000)) and set(cat.unique().tolist()) == {0.0, 1.0}
    counts = cat.sum(0)
    assert counts.min() > 900 and counts.max() < 1100              # uniform over 4 categories
    assert cont.min() >= -1 and cont.max() <= 1 and abs(cont.var().item() - CONT_VARIANCE) < 0.02
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    torch.testing.assert_close(lat, lay.sample(4000, generator=torch.Generator().manual_seed(0)), rtol=0, atol=0)
    uni = LatentLayout(z_dim=3, cat_dim=0, cont_dim=1, z_dist="uniform").sample(500, generator=torch.Generator())
    assert uni[:, :3].min() >= -1 and uni[:, :3].max() <= 1 and uni.shape == (500, 4)


def test_latents_from_codes_and_setting_codes() -> None:
    lay = LatentLayout(z_dim=3, cat_dim=4, cont_dim=2)
    z = torch.randn(2, 3)
    lat = lay.from_codes(z, cat=3, cont=[0.8, -0.2])
    assert torch.equal(lat[:, :3], z)
    assert lat[:, 3:7].tolist() == [[0, 0, 0, 1]] * 2
    torch.testing.assert_close(lat[:, 7:], torch.tensor([[0.8, -0.2]] * 2))
    assert lay.categories(lat).tolist() == [3, 3]
    per_row = lay.from_codes(z, cat=torch.tensor([0, 2]), cont=torch.tensor([[0.0, 1.0], [-1.0, 0.5]]))
    assert lay.categories(per_row).tolist() == [0, 2]
    edited = lay.set_codes(per_row, {"cat": 1, "c2": -0.5})
    assert lay.categories(edited).tolist() == [1, 1] and edited[:, 8].tolist() == [-0.5, -0.5]
    torch.testing.assert_close(edited[:, :3], z)
    torch.testing.assert_close(edited[:, 7], per_row[:, 7])       # c1 untouched
    assert lay.categories(per_row).tolist() == [0, 2]             # set_codes copies
    with pytest.raises(ValueError, match="cat: expected a category in 0..3"):
        lay.from_codes(z, cat=4, cont=[0, 0])
    with pytest.raises(ValueError, match=r"c1: continuous codes lie in \[-1, 1\]"):
        lay.set_codes(lat, {"c1": 1.5})
    with pytest.raises(ValueError, match="unknown code 'c3'; this latent has cat, c1, c2"):
        lay.set_codes(lat, {"c3": 0.0})
    with pytest.raises(ValueError, match="cont: this layout has 2 continuous codes"):
        lay.from_codes(z, cat=1)
    described = lay.describe()
    assert described["cat"] == [3, 7] and described["cont"] == [7, 9] and LatentLayout.from_description(described) == lay


def test_traversal_latents_are_rows_of_categories_and_columns_of_one_code() -> None:
    lay = LatentLayout(z_dim=3, cat_dim=4, cont_dim=2)
    z = torch.randn(3)
    grids = lay.traversals(z)
    assert sorted(grids) == ["traverse_c1", "traverse_c2"]
    lat = grids["traverse_c2"].view(4, 4, lay.dim)                # rows x columns (square: the default grid layout)
    assert (lay.categories(grids["traverse_c2"]).view(4, 4) == torch.arange(4)[:, None]).all()
    torch.testing.assert_close(lat[..., 8], torch.linspace(-1, 1, 4).expand(4, 4))
    assert (lat[..., 7] == 0).all()                                # the other code fixed at 0
    torch.testing.assert_close(lat[..., :3], z.expand(4, 4, 3))    # z fixed
    only_cont = LatentLayout(z_dim=3, cat_dim=0, cont_dim=1).traversals(z, base_BL=torch.randn(8, 4))
    assert only_cont["traverse_c1"].shape == (64, 4)
    only_cat = LatentLayout(z_dim=3, cat_dim=5, cont_dim=0).traversals(z, base_BL=torch.randn(8, 8))
    assert only_cat["traverse_cat"].shape == (25, 8)


# ============================================================================ the info loss

def test_info_loss_matches_hand_computation() -> None:
    lay = LatentLayout(z_dim=2, cat_dim=3, cont_dim=2)
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    lat = lay.from_codes(z, cat=torch.tensor([2, 0]), cont=torch.tensor([[0.5, -0.5], [1.0, 0.0]]))
    logits = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]], requires_grad=True)
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z_hat = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    q = torch.cat([logits, mu, z_hat], 1)
    loss, sc = info_loss(q, lat, lay, cat_weight=2.0, cont_weight=0.5, z_weight=0.1)
    ce = F.cross_entropy(logits, torch.tensor([2, 0]))
    cont_nll = 0.5 * ((0.25 + 0.25) + (0.0 + 1.0)) / 2            # 1/2 sum_j (mu - c)^2, batch mean
    z_mse = (0 + 1 + 1 + 0) / 4
    torch.testing.assert_close(loss, 2.0 * ce + 0.5 * cont_nll + 0.1 * z_mse)
    assert sc["mi/cat_acc"].item() == 1.0                         # both argmaxes right
    torch.testing.assert_close(sc["mi/cat_nats"], math.log(3) - ce.detach())
    torch.testing.assert_close(sc["mi/cont_mse"], torch.tensor(1.5 / 4))
    torch.testing.assert_close(sc["mi/cont_r2"], 1 - torch.tensor(1.5 / 4) / CONT_VARIANCE)
    torch.testing.assert_close(sc["mi/z_mse"], torch.tensor(z_mse))
    no_z, _ = info_loss(q[:, :5], lat, lay, cat_weight=2.0, cont_weight=0.5)
    torch.testing.assert_close(no_z, 2.0 * ce + 0.5 * cont_nll)
    with pytest.raises(ValueError, match=r"expected shape \(B, 5\)"):
        info_loss(q, lat, lay, cat_weight=1, cont_weight=1)


# ============================================================================ nets and phases

def test_d_has_the_noise_recovery_head_only_when_asked() -> None:
    with_head = InfoGANDiscriminator(resolution=16, base_channels=4, code_dim=6, q_hidden=8, z_dim=5)
    without = InfoGANDiscriminator(resolution=16, base_channels=4, code_dim=6, q_hidden=8)
    img = torch.randn(3, 3, 16, 16)
    logits, q = with_head(img, with_q=True)
    assert logits.shape == (3,) and q.shape == (3, 11)
    assert without(img, with_q=True)[1].shape == (3, 6) and without(img).shape == (3,)
    assert any(n.startswith("z_head.") for n, _ in with_head.named_parameters())
    assert not any(n.startswith("z_head.") for n, _ in without.named_parameters())
    cfg = run_cfg(gan={"noise_recovery": 0.0})
    nets = FAMILY.build_nets(cfg, DataInfo())
    assert nets["D"].z_head is None and nets["G"].z_dim == 8 + 4 + 1


def _step_grads(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    nets = FAMILY.build_nets(cfg, DataInfo())
    steps = FAMILY.build_steps(cfg, DataInfo())
    ctx = StepContext(nets=nets, batch={"image": torch.rand(4, 3, 32, 32) * 2 - 1}, kimg=0.0,
                      generator=torch.Generator().manual_seed(1))
    loss_d, sc = steps.d(ctx)
    loss_d.backward()
    d_grads = {n: p.grad.clone() for n, p in nets["D"].named_parameters()}
    assert all(p.grad is None for p in nets["G"].parameters()), "the D phase must not reach G"
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    loss_g, _ = steps.g(ctx)
    loss_g.backward()
    g_grads = {n: p.grad.clone() for n, p in nets["G"].named_parameters()}
    return d_grads, g_grads, sc


def test_info_loss_trains_q_in_the_d_phase_and_g_in_the_g_phase() -> None:
    d_on, g_on, sc = _step_grads(run_cfg(gan={"noise_recovery": 0.1}))
    d_off, g_off, _ = _step_grads(run_cfg(gan={"noise_recovery": 0.1, "info_weight": 0.0}))
    # Q's and the z head's weights get gradient only from the info loss; the trunk from both terms.
    assert all(d_on[n].abs().sum() > 0 for n in d_on if n.startswith(("q_head.", "z_head.")))
    assert all(d_off[n].abs().sum() == 0 for n in d_off if n.startswith(("q_head.", "z_head.")))
    assert not torch.allclose(d_on["trunk.0.weight"], d_off["trunk.0.weight"])
    # G gets the info term's gradient too.
    assert not torch.allclose(g_on["net.0.weight"], g_off["net.0.weight"])
    assert {"mi/cat_acc", "mi/cont_r2", "mi/z_mse", "loss/info"} <= set(sc)


def test_tick_images_write_traversal_grids(tmp_path: Path) -> None:
    cfg = run_cfg()
    nets = FAMILY.build_nets(cfg, DataInfo())
    steps = FAMILY.build_steps(cfg, DataInfo())
    with torch.no_grad():
        grids = steps.tick_images({k: v.eval() for k, v in nets.items()}, latent=steps.latent(4), attrs=None,
                                  real=None)
    assert sorted(grids) == ["samples", "traverse_c1"] and grids["traverse_c1"].shape == (16, 3, 32, 32)
    assert steps.meta()["latent_layout"]["code_names"] == ["cat", "c1"]


# ============================================================================ config

@pytest.mark.parametrize("section,values,message", [
    ("model", {"cat_dim": 1}, "model.cat_dim: expected 0 .* or 2..256, got 1"),
    ("model", {"cat_dim": 0, "cont_dim": 0}, "an InfoGAN needs at least one code"),
    ("model", {"cont_dim": 65}, "model.cont_dim: expected 0..64"),
    ("model", {"q_hidden": 10**6}, "model.q_hidden: expected 1..4096"),
    ("model", {"resolution": 1024, "base_channels": 1024}, "1024 at 1024 px gives nets of about .* more than 150M"),
    ("gan", {"noise_recovery": -0.1}, "noise_recovery must be >= 0"),
    ("gan", {"info_weight": float("nan")}, r"gan.info_weight: expected a finite number, got nan"),
    ("gan", {"d_noise_power": -1}, "d_noise_power must be >= 0"),
])
def test_bad_options_are_refused_naming_the_field(section: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cfg(**{section: values})


def test_noise_power_fraction_is_the_variance_of_d_input_noise() -> None:
    cfg = from_dict(RunConfig, {"data": {"shards": "x"}, "model": {"family": "infogan"},
                                "gan": {"d_noise_power": "1/15", "d_noise_anneal_kimg": 10}})
    steps = FAMILY.build_steps(cfg, DataInfo())
    assert cfg.gan.d_noise_power == pytest.approx(1 / 15)
    assert steps.d_noise_std(0.0) == pytest.approx(math.sqrt(1 / 15))
    assert steps.d_noise_std(5.0) == pytest.approx(math.sqrt(1 / 30)) and steps.d_noise_std(10.0) == 0.0


# ============================================================================ training

def test_q_beats_chance_only_with_the_info_loss(synthetic_shards: Path, tmp_path: Path) -> None:
    """40 steps of 16 at 32 px: Q recovers the 4-way code of fresh fakes well above chance (0.25)
    with the info loss, and stays near chance without it (Q never trains)."""
    import json

    from facegan.loop import train

    with_info = train(run_cfg(synthetic_shards, tmp_path / "on"))
    without = train(run_cfg(synthetic_shards, tmp_path / "off", gan={"info_weight": 0.0}))
    assert with_info["mi/cat_acc"] >= 0.4, with_info
    assert without["mi/cat_acc"] < 0.35, without
    ticks = [json.loads(line) for line in (tmp_path / "on" / "losses.jsonl").read_text().splitlines()]
    ticks = [r for r in ticks if r["kind"] == "tick"]
    assert ticks[-1]["mi/cat_acc"] > ticks[0]["mi/cat_acc"]
    assert (tmp_path / "on" / "samples" / "traverse_c1-latest.png").stat().st_size > 0


def test_resume_refuses_a_checkpoint_with_the_other_noise_head(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.loop import train

    train(run_cfg(synthetic_shards, tmp_path, train={"total_kimg": 0.032}, gan={"noise_recovery": 0.1}))
    with pytest.raises(CheckpointError, match="with the noise-recovery .* set it > 0"):
        train(run_cfg(synthetic_shards, tmp_path, train={"total_kimg": 0.064, "resume": "latest"}))


@pytest.mark.slow
def test_two_rank_ddp_without_the_noise_head(synthetic_shards: Path, tmp_path: Path) -> None:
    from ranks import run_ranks
    from test_families import _ddp_worker, family_cfg

    cfg = family_cfg("infogan", synthetic_shards, tmp_path / "ddp", gan={"noise_recovery": 0.0},
                     train={"tick_kimg": 0.048, "checkpoint_kimg": 0.048})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "params.pt", weights_only=True)
    torch.testing.assert_close(got["rank0"], got["rank1"], rtol=0, atol=0)


# ============================================================================ Ray Train, sweep

@pytest.mark.slow
@pytest.mark.parametrize("name", ["infogan", "began"])
def test_two_worker_ray_train_run(name: str, ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    """2 DDP workers on Ray Train (one per node of the session cluster), the family's smoke size."""
    from facegan.checkpoint import load_checkpoint
    from facegan.launch.trainer import run_training

    from test_families import family_cfg

    cfg = family_cfg(name, synthetic_shards, tmp_path / "run",
                     train={"total_kimg": 0.064, "tick_kimg": 0.032, "checkpoint_kimg": 0.032},
                     ray={"num_workers": 2, "max_failures": 0, "placement_strategy": "STRICT_SPREAD"})
    result = run_training(cfg, config_dict=to_dict(cfg))
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert meta["world_size"] == 2 and meta["step"] == 4 and result["metrics"]["step"] == 4
    assert all(math.isfinite(result["metrics"][m]) for m in FAMILIES[name].metrics if m in result["metrics"])
    if name == "infogan":
        assert 0 <= result["metrics"]["mi/cat_acc"] <= 1 and meta["latent_layout"]["cat_dim"] == 4
    else:
        assert 0 <= float(state["family"]["k"]) <= 1 and result["metrics"]["began/M"] > 0


def test_grid_sweep_ties_latent_size_and_shards_to_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facegan.sweeps.spec import load_sweep

    monkeypatch.chdir(tmp_path)
    plan = load_sweep(REPO / "sweeps" / "infogan_grid.yaml")
    assert plan.num_trials == 64 and plan.spec.objective.metric == "mi/cat_acc"
    for point in plan.points:
        cfg = from_dict(RunConfig, plan.trial_config(point, trial_id="t"))
        assert cfg.model.family == "infogan"
        assert cfg.model.z_dim == {32: 64, 64: 128}[cfg.model.resolution]
        # Both shard sets absolute, relative to where the sweep starts: Tune runs trials elsewhere.
        assert cfg.data.shards == str(tmp_path / "data" / {32: "celeba32", 64: "celeba64"}[cfg.model.resolution])
        assert cfg.optim.g_lr == cfg.optim.d_lr and cfg.gan.d_noise_power in (pytest.approx(1 / 15), pytest.approx(1 / 20))
    assert {p["data.batch_size"] for p in plan.points} == {8, 64, 128, 512}
    assert {p["model.cat_dim"] for p in plan.points} == {8, 10}
