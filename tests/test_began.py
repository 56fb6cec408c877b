"""BEGAN and InfoBEGAN: the autoencoder loss, k_t's update and the convergence measure against hand
computations, the phases' gradients, the rate decay when M stalls (and the loop applying it), k_t
and the decay state as exact family state, k_t agreeing across 2 DDP ranks that see different data,
and InfoBEGAN's predictor recovering the codes.

    .venv/bin/python -m pytest tests/test_began.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo
from facegan.families.began.nets import build_began
from facegan.families.began.steps import STATE_KEYS, BEGANSteps, ae_loss, convergence, k_update
from facegan.families.steps import StepContext

BEGAN = FAMILIES["began"]
INFOBEGAN = FAMILIES["infobegan"]


def run_cfg(shards: Path | str = "unused", out: Path | str = "runs/x", *, family: str = "began",
            **sections: dict[str, Any]) -> RunConfig:
    model: dict[str, Any] = {"family": family, "resolution": 32, "z_dim": 8, "h_dim": 16, "base_channels": 8}
    if family == "infobegan":
        model.update(cat_dim=4, cont_dim=1, q_hidden=16)
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": model,
        "train": {"total_kimg": 0.64, "tick_kimg": 0.16, "checkpoint_kimg": 10, "num_threads": 1, "out_dir": str(out),
                  "grid_size": 4, "deterministic": True},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


def ctx_for(nets: dict, *, seed: int = 0, kimg: float = 0.0, batch: int = 4) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    return StepContext(nets=nets, batch={"image": torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1}, kimg=kimg,
                       generator=torch.Generator().manual_seed(seed + 1))


# ============================================================================ the maths

def test_losses_k_update_and_convergence_measure_by_hand() -> None:
    x = torch.tensor([[0.0, 1.0], [-1.0, 0.5]])
    rec = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    assert ae_loss(rec, x).item() == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    k = torch.tensor(0.2)
    lx, lg = torch.tensor(0.3), torch.tensor(0.1)
    assert k_update(k, loss_real=lx, loss_fake=lg, gamma=0.5, lambda_k=0.001).item() == pytest.approx(0.2 + 0.001 * 0.05)
    assert k_update(torch.tensor(0.0), loss_real=lx, loss_fake=torch.tensor(0.9), gamma=0.5, lambda_k=1.0).item() == 0.0
    assert k_update(torch.tensor(0.99), loss_real=lx, loss_fake=lg, gamma=1.0, lambda_k=1.0).item() == 1.0
    assert convergence(loss_real=lx, loss_fake=lg, gamma=0.5).item() == pytest.approx(0.3 + 0.05)
    assert convergence(loss_real=lx, loss_fake=torch.tensor(0.4), gamma=0.5).item() == pytest.approx(0.3 + 0.25)


def test_d_phase_is_l_real_minus_k_l_fake_and_after_step_moves_k() -> None:
    cfg = run_cfg(gan={"k_init": 0.25, "lambda_k": 0.01})
    torch.manual_seed(0)
    nets = BEGAN.build_nets(cfg, DataInfo())
    steps = BEGANSteps(cfg)
    ctx = ctx_for(nets)
    loss, sc = steps.d(ctx)
    fake = ctx.carry["fake_BCHW"].detach()
    with torch.no_grad():
        lx, lg = ae_loss(nets["D"](ctx.real), ctx.real), ae_loss(nets["D"](fake), fake)
    torch.testing.assert_close(loss.detach(), lx - 0.25 * lg)
    torch.testing.assert_close(sc["began/k"], torch.tensor(0.25))
    torch.testing.assert_close(sc["began/M"], lx + (0.5 * lx - lg).abs())
    loss.backward()
    assert all(p.grad is None for p in nets["G"].parameters()), "the D phase must not reach G"
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    loss_g, _ = steps.g(ctx)
    loss_g.backward()
    assert all(p.grad is not None for p in nets["G"].parameters())
    steps.after_step(ctx)
    torch.testing.assert_close(steps.k, (0.25 + 0.01 * (0.5 * lx - lg)).clamp(0, 1))


def test_nets_shapes_and_a_fresh_g_depends_on_z() -> None:
    torch.manual_seed(0)
    nets = build_began(resolution=64, z_dim=12, h_dim=16, base_channels=8)
    z = torch.rand(16, 12) * 2 - 1
    img = nets["G"](z)
    assert img.shape == (16, 3, 64, 64) and img.abs().max() <= 1
    assert nets["D"](img).shape == img.shape
    # Xavier init keeps the signal: images differ across z (PyTorch's default init gave ~0.002).
    assert img.std(0).mean() > 0.05
    with pytest.raises(ValueError, match="resolution must be a power of two >= 16"):
        build_began(resolution=24)


# ============================================================================ the rate decay

def test_rate_decays_when_m_stalls_and_never_below_the_floor() -> None:
    cfg = run_cfg(gan={"lr_patience_kimg": 4.0, "lr_decay": 0.5, "lr_min_factor": 0.3, "m_window_kimg": 1.0,
                       "m_min_delta": 0.1})
    steps = BEGANSteps(cfg)
    assert steps.lr_factors() == {"G": 1.0, "D": 1.0}
    # Window means at kimg 1, 2, ...: an improvement, then a stall for 4 kimg, then another, ...
    for kimg, m in [(1, 1.0), (2, 0.95), (3, 0.95), (4, 0.95), (5, 0.96)]:
        steps._close_window(m, kimg=kimg)
    assert steps.lr_factor == 0.5 and steps.num_decays == 1 and steps.best_m == 1.0   # 0.95 is not 10% better
    steps._close_window(0.8, kimg=6)                                                   # improves: patience restarts
    assert steps.best_m == 0.8 and steps.last_improved_kimg == 6
    for kimg in range(7, 20):
        steps._close_window(0.8, kimg=kimg)
    assert steps.lr_factor == 0.3 and steps.num_decays == 2                            # the floor
    assert steps.lr_factors() == {"G": 0.3, "D": 0.3}
    assert BEGANSteps(run_cfg()).lr_factors() == {}                                   # no decay: rates untouched


def test_loop_applies_the_decayed_rates_and_resumes_the_decay_state(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.checkpoint import list_checkpoints, load_checkpoint
    from facegan.loop import train

    gan = {"lr_patience_kimg": 0.032, "m_window_kimg": 0.016, "lr_decay": 0.5, "m_min_delta": 0.5}
    train(run_cfg(synthetic_shards, tmp_path, gan=gan, train={"total_kimg": 0.32, "checkpoint_kimg": 0.16}))
    state, meta = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    fam = state["family"]
    assert set(fam) == set(STATE_KEYS) and fam["num_decays"] >= 1
    for opt in ("opt_G", "opt_D"):
        assert state[opt]["param_groups"][0]["lr"] == pytest.approx(1e-4 * fam["lr_factor"])
    rows = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if r["kind"] == "step"]
    assert all("began/k" in r and "began/M" in r for r in steps_rows)
    assert [r for r in rows if r["kind"] == "tick"][-1]["began/lr_factor"] == fam["lr_factor"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0


def test_state_round_trips_exactly_and_refuses_other_keys() -> None:
    steps = BEGANSteps(run_cfg(gan={"lr_patience_kimg": 1.0}))
    steps.k = torch.tensor(0.123456)
    steps._close_window(0.7, kimg=3.0)
    other = BEGANSteps(run_cfg(gan={"lr_patience_kimg": 1.0}))
    other.load_state_dict(steps.state_dict())
    for key, value in steps.state_dict().items():
        got = other.state_dict()[key]
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, key
    with pytest.raises(ValueError, match="expected state"):
        other.load_state_dict({"k": torch.tensor(0.0)})


@pytest.mark.parametrize("values,message", [
    ({"gamma": 0.0}, "gamma must be in"), ({"lambda_k": -1}, "lambda_k must be >= 0"),
    ({"k_init": 2}, "k_init must be in"), ({"lr_decay": 0}, "lr_decay must be in"),
    ({"m_window_kimg": 0}, "m_window_kimg must be > 0"), ({"lr_patience_kimg": float("inf")}, "finite"),
])
def test_bad_options_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cfg(gan=values)


def test_parameter_counts_are_known_before_building_and_huge_nets_are_refused() -> None:
    from facegan.families.began import decoder_params, encoder_params
    from facegan.families.began.nets import BEGANDecoder, BEGANEncoder

    for res, n, h in [(16, 4, 8), (64, 16, 64)]:
        assert encoder_params(resolution=res, base_channels=n, h_dim=h) == \
            sum(p.numel() for p in BEGANEncoder(resolution=res, base_channels=n, h_dim=h).parameters())
        assert decoder_params(resolution=res, base_channels=n, in_dim=h) == \
            sum(p.numel() for p in BEGANDecoder(resolution=res, base_channels=n, in_dim=h).parameters())
    with pytest.raises(ConfigError, match="model.base_channels, model.h_dim, model.resolution: .* more than 150M"):
        run_cfg(model={"resolution": 1024, "base_channels": 512, "h_dim": 4096})
    with pytest.raises(ConfigError, match="more than 150M"):
        run_cfg(family="infobegan", model={"resolution": 512, "base_channels": 256, "h_dim": 1024})


def test_model_options_of_dcgan_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key model.g_batchnorm"):
        run_cfg(model={"g_batchnorm": True})


# ============================================================================ k_t across ranks

def _k_worker(rank: int, world: int, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    cfg = run_cfg(gan={"lambda_k": 0.05, "lr_patience_kimg": 0.01, "m_window_kimg": 0.004})
    torch.manual_seed(0)
    bare = BEGAN.build_nets(cfg, DataInfo())
    nets = {k: torch.nn.parallel.DistributedDataParallel(v) for k, v in bare.items()}
    opts = {k: torch.optim.Adam(v.parameters(), lr=1e-3) for k, v in bare.items()}
    steps = BEGANSteps(cfg)
    rows = []
    for i in range(6):
        ctx = ctx_for(nets, seed=100 * rank + i, kimg=i * 0.004)  # each rank its own data and latents
        for phase, opt in (("d", "D"), ("g", "G")):
            loss, sc = steps.run(phase, ctx)
            opts[opt].zero_grad(set_to_none=True)
            loss.backward()
            opts[opt].step()
            if phase == "d":
                local = torch.stack([sc["loss/d_real"], sc["loss/d_fake"]])
        steps.after_step(ctx)
        rows.append(torch.cat([local, steps.k.reshape(1), torch.tensor([steps.lr_factor])]))
    mine = torch.stack(rows)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    if rank == 0:
        torch.save(torch.stack(everyone), Path(result_dir) / "k.pt")


@pytest.mark.slow
def test_k_is_the_same_on_both_ranks_and_follows_the_rank_mean_losses(tmp_path: Path) -> None:
    from ranks import run_ranks

    run_ranks(_k_worker, str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "k.pt", weights_only=True)        # rank x step x [L(x), L(G(z)), k, lr factor]
    assert not torch.equal(got[0, :, :2], got[1, :, :2]), "the ranks should see different data"
    torch.testing.assert_close(got[0, :, 2:], got[1, :, 2:], rtol=0, atol=0)
    mean = got[:, :, :2].sum(0) / 2                               # all_reduce (sum) / world, as mean_over_ranks
    k = torch.tensor(0.0)
    for step in range(got.shape[1]):
        k = k_update(k, loss_real=mean[step, 0], loss_fake=mean[step, 1], gamma=0.5, lambda_k=0.05)
        torch.testing.assert_close(got[0, step, 2], k, rtol=0, atol=1e-7)
    # ... and not the value one rank's own losses would give.
    own = k_update(torch.tensor(0.0), loss_real=got[1, 0, 0], loss_fake=got[1, 0, 1], gamma=0.5, lambda_k=0.05)
    assert not torch.isclose(own, got[0, 0, 2], rtol=0, atol=1e-9)


# ============================================================================ InfoBEGAN

def test_infobegan_trains_q_with_d_and_g_through_q(synthetic_shards: Path) -> None:
    cfg = run_cfg(family="infobegan")
    assert INFOBEGAN.optimizers(cfg)["D"].nets == ("D", "Q")
    torch.manual_seed(0)
    nets = INFOBEGAN.build_nets(cfg, DataInfo())
    assert nets["G"].in_dim == 8 + 4 + 1 and not any(p.requires_grad is False for p in nets["Q"].parameters())
    steps = INFOBEGAN.build_steps(cfg, DataInfo())
    ctx = ctx_for(nets)
    loss, sc = steps.d(ctx)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["Q"].parameters())
    assert {"mi/cat_acc", "mi/z_mse", "began/k", "loss/info"} <= set(sc)
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    loss_g, _ = steps.g(ctx)
    loss_g.backward()
    with_info = torch.cat([p.grad.flatten() for p in nets["G"].parameters()])
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    ctx2 = ctx_for(nets)
    steps.d(ctx2)
    plain, _ = BEGANSteps.g(steps, ctx2)
    plain.backward()
    assert not torch.allclose(with_info, torch.cat([p.grad.flatten() for p in nets["G"].parameters()]))


def test_infobegan_predictor_recovers_the_code(synthetic_shards: Path, tmp_path: Path) -> None:
    """40 steps of 16: the 4-way code of fresh fakes is recovered far above chance (0.25)."""
    from facegan.loop import train

    metrics = train(run_cfg(synthetic_shards, tmp_path, family="infobegan"))
    assert metrics["mi/cat_acc"] >= 0.6, metrics
    assert math.isfinite(metrics["began/M"]) and 0 <= metrics["began/k"] <= 1
    names = {p.name.split("-")[0] for p in (tmp_path / "samples").glob("*-latest.png")}
    assert names == {"reconstruction", "traverse_c1"}
