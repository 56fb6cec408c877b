"""The progressive family (seed 004): its maths and its run-time behaviour at toy size.

Diversity gradient against a hand computation, the growth schedule (the family test's resume point
is mid-fade, its DDP run grows), stage freezing and shapes, the sphere latent, the adaptive noise,
the training video across a resume, 2-rank DDP through fade -> stable with identical eps, and a
2-worker Ray Train run on UTKFace-layout shards.

    .venv/bin/python -m pytest -q tests/test_progressive.py
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from facegan.config import ConfigError, to_dict
from facegan.families import FAMILIES
from facegan.families.base import DataInfo
from facegan.families.progressive.diversity import diversity_push, diversity_term
from facegan.families.progressive.nets import Discriminator, Generator, coordinates
from facegan.families.progressive.video import count_frames, sorted_frames
from facegan.families.steps import StepContext
from ranks import run_ranks
from test_families import family_cfg, final_state

FAMILY = FAMILIES["progressive"]


def smoke_steps(tmp_path: Path, shards: Path, **sections: dict[str, Any]):
    cfg = family_cfg("progressive", shards, tmp_path, **sections)
    return cfg, FAMILY.build_nets(cfg, DataInfo()), FAMILY.build_steps(cfg, DataInfo())


# ============================================================================ diversity learning

def test_diversity_gradient_matches_the_formula_by_hand() -> None:
    # 3 samples of 2 values; x_i - x_j for every pair and value, then the formula, written out.
    rows = [[0.0, 1.0], [0.2, 1.0], [-0.9, 3.0]]
    x = torch.tensor(rows, requires_grad=True)

    def phi(d: float) -> float:
        return math.copysign(1.0, d) * 0.05 * (1.05 / (d * d + 0.05) - 1.0) if d != 0 else 0.0

    weight, n, values = 0.7, 3, 2
    expected = [[-weight / (n * math.sqrt(values)) * sum(phi(rows[i][v] - rows[j][v]) for j in range(n) if j != i)
                 / (n - 1) for v in range(values)] for i in range(n)]
    term = diversity_term(x, weight=weight)
    assert term.item() == 0.0                       # it only injects a gradient
    term.backward()
    torch.testing.assert_close(x.grad, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # Spot values of the formula: 1 at d -> 0+, 0 at |d| = 1, a weak pull beyond.
    assert phi(1e-9) == pytest.approx(1.0) and phi(1.0) == pytest.approx(0.0) and phi(2.0) < 0
    # Close values are pushed apart: descent moves sample 1's first value (0.2) up, away from 0.0,
    # and sample 0's down, away from 0.2 (-0.9 is far enough to barely count).
    assert x.grad[1, 0] < 0 and x.grad[0, 0] > 0
    _, dist = diversity_push(x.detach())
    pairs = [abs(rows[i][v] - rows[j][v]) for i in range(n) for j in range(n) if i != j for v in range(values)]
    assert dist.item() == pytest.approx(sum(pairs) / len(pairs))


def test_diversity_gradient_reaches_g_and_only_adds_to_the_adversarial_one() -> None:
    torch.manual_seed(0)
    G = Generator(resolution=16, base_size=4, width=6, z_dim=5)
    z = torch.randn(4, 5)
    fake = G(z)
    adv = fake.square().mean()
    g_adv, = torch.autograd.grad(adv, fake, retain_graph=True)
    g_both, = torch.autograd.grad(adv + diversity_term(fake, weight=0.3), fake)
    push, _ = diversity_push(fake)
    torch.testing.assert_close(g_both - g_adv, -0.3 * push / (4 * math.sqrt(3 * 8 * 8)))


# ============================================================================ schedule and nets

def test_schedule_and_the_family_tests_split_points(tmp_path: Path, synthetic_shards: Path) -> None:
    _, _, steps = smoke_steps(tmp_path, synthetic_shards)   # 32 = 8 * 2**2, stable 0.008, fade 0.032
    got = [(k, steps.stage(k), steps.alpha(k)) for k in (0, 0.008, 0.016, 0.024, 0.032, 0.040, 1.0)]
    assert got == [(0, 0, 1.0), (0.008, 1, 0.0), (0.016, 1, 0.25), (0.024, 1, 0.5), (0.032, 1, 0.75),
                   (0.040, 2, 1.0), (1.0, 2, 1.0)]
    # test_families resumes at 0.024 kimg (mid-fade) and its 2-rank run (16 images a step) steps at
    # 0, 0.016, 0.032 kimg: it enters the fade at its second step.
    assert steps.level_of(1) == (2, True) and steps.level_of(2) == (2, False) and steps.level_of(0) == (1, False)
    assert [steps.size_of(s) for s in (0, 1, 2)] == [16, 32, 32]


def test_schedule_at_200_px_grows_50_100_200() -> None:
    from facegan.families import load_run_config

    cfg = load_run_config("configs/progressive_utkface200.yaml", [])
    steps = FAMILY.build_steps(cfg, DataInfo())
    sizes = {k: (steps.size_of(steps.stage(k)), steps.alpha(k)) for k in (0, 59.9, 60, 90, 120, 180, 210, 300, 600)}
    assert sizes == {0: (50, 1.0), 59.9: (50, 1.0), 60: (100, 0.0), 90: (100, 0.5), 120: (100, 1.0),
                     180: (200, 0.0), 210: (200, 0.5), 300: (200, 1.0), 600: (200, 1.0)}


def test_enter_stage_freezes_what_the_stage_does_not_use(tmp_path: Path, synthetic_shards: Path) -> None:
    cfg, nets, steps = smoke_steps(tmp_path, synthetic_shards)
    G, D = nets["G"], nets["D"]
    for stage in (0, 1, 2):
        steps.enter_stage(nets, stage)
        level, fading = steps.level_of(stage)
        for a in (0.0, 0.3, 0.99) if fading else (1.0,):   # a fade's alpha is < 1 by construction
            G.alpha.fill_(a)
            D.alpha.fill_(a)
            for net in (G, D):
                net.zero_grad(set_to_none=True)
            z = steps.latent(3)
            img = G(z)
            assert img.shape == (3, 3, steps.size_of(stage), steps.size_of(stage)) and img.abs().max() <= 1
            D(img).sum().backward()
            # Exactly the parameters that require grad get one (DDP's find_unused_parameters=False).
            for net in (G, D):
                for name, p in net.named_parameters():
                    assert (p.grad is not None) == p.requires_grad, (stage, a, name)
        assert G.stage()[0] == level
    # Every layer has `width` channels, only toRGB / fromRGB carry biases.
    biased = sorted(n for net in (G, D) for n, p in net.named_parameters() if n.endswith("bias"))
    assert all(n.startswith(("to_rgb", "from_rgb")) for n in biased) and biased
    assert {m.out_channels for m in G.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)} == {8}


def test_fade_blends_the_previous_level_and_reals_match() -> None:
    torch.manual_seed(0)
    G = Generator(resolution=16, base_size=4, width=5, z_dim=3)
    D = Discriminator(resolution=16, base_size=4, width=5)
    z = torch.randn(2, 3)
    G.set_stage(level=1, alpha=1.0)
    coarse = G(z)
    G.set_stage(level=2, alpha=0.0)
    # alpha 0: exactly the previous level's image, upsampled.
    torch.testing.assert_close(G(z), torch.nn.functional.interpolate(coarse, scale_factor=2, mode="nearest"))
    D.set_stage(level=2, alpha=0.0)
    D_coarse = Discriminator(resolution=16, base_size=4, width=5)
    D_coarse.load_state_dict(D.state_dict())
    D_coarse.set_stage(level=1, alpha=1.0)
    img = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(D(img), D_coarse(torch.nn.functional.avg_pool2d(img, 2)))
    # The injected tensor: width channels, the last two x and y.
    inj = G.injected(z, 4)
    assert inj.shape == (2, 5, 4, 4)
    torch.testing.assert_close(inj[:, 3:], coordinates(4, batch=2, device=z.device, dtype=z.dtype))
    assert inj[0, 3, 0].tolist() == pytest.approx([-1, -1 / 3, 1 / 3, 1]) and inj[0, 4, :, 0].tolist()[0] == -1


def test_real_batch_at_a_stage(tmp_path: Path, synthetic_shards: Path) -> None:
    _, _, steps = smoke_steps(tmp_path, synthetic_shards)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    pooled16 = torch.nn.functional.avg_pool2d(real, 2)
    torch.testing.assert_close(steps.real_at(real, level=1, alpha=1.0), pooled16)
    torch.testing.assert_close(steps.real_at(real, level=2, alpha=1.0), real)
    up = torch.nn.functional.interpolate(pooled16, scale_factor=2, mode="nearest")
    torch.testing.assert_close(steps.real_at(real, level=2, alpha=0.25), 0.75 * up + 0.25 * real)


def test_sphere_latent_and_bad_configs(tmp_path: Path, synthetic_shards: Path) -> None:
    _, _, steps = smoke_steps(tmp_path, synthetic_shards)
    z = steps.latent(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.norm(dim=1), torch.full((64,), math.sqrt(16)))
    _, _, normal = smoke_steps(tmp_path, synthetic_shards, gan={"latent": "normal"})
    assert normal.latent(64).norm(dim=1).std() > 0.1
    for section, values, field in [("model", {"resolution": 48}, "model.resolution"),
                                   ("model", {"width": 2}, "model.width"),
                                   ("model", {"width": 100_000}, "model.width"),
                                   ("model", {"base_size": 1}, "model.base_size"),
                                   ("gan", {"latent": "cube"}, "gan.latent"),
                                   ("gan", {"stable_kimg": 0}, "gan.stable_kimg"),
                                   ("gan", {"noise_target": 1.0}, "gan.noise_target"),
                                   ("gan", {"noise_init": 2.0}, "gan.noise_init"),
                                   ("gan", {"diversity_weight": float("nan")}, "gan.diversity_weight"),
                                   ("train", {"video_samples": 10_000}, "train.video_samples"),
                                   ("model", {"resolution": 1024, "base_size": 512, "width": 512, "z_dim": 4096},
                                    "model.base_size")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            family_cfg("progressive", synthetic_shards, tmp_path, **{section: values})


def test_adaptive_noise_follows_the_rating_gap(tmp_path: Path, synthetic_shards: Path) -> None:
    cfg, nets, steps = smoke_steps(tmp_path, synthetic_shards, gan={"noise_target": 0.3, "noise_speed": 10.0,
                                                                    "noise_max": 0.5})
    ctx = StepContext(nets=nets, batch={"image": torch.zeros(8, 3, 32, 32)}, kimg=0.0,
                      generator=torch.Generator().manual_seed(0))
    steps._gap = torch.tensor(0.8)          # D tells reals from fakes too well: more noise
    steps.after_step(ctx)
    assert steps.eps.item() == pytest.approx(10.0 * 0.5 * 0.008)
    for _ in range(100):
        steps._gap = torch.tensor(1.0)
        steps.after_step(ctx)
    assert steps.eps.item() == pytest.approx(0.5)           # clipped at noise_max
    steps._gap = torch.tensor(0.0)
    steps.after_step(ctx)
    assert steps.eps.item() == pytest.approx(0.5 - 10.0 * 0.3 * 0.008)
    # Checkpointed exactly; off means fixed.
    other = FAMILY.build_steps(cfg, DataInfo())
    other.load_state_dict(steps.state_dict())
    assert other.eps.item() == steps.eps.item()
    _, _, fixed = smoke_steps(tmp_path, synthetic_shards, gan={"adaptive_noise": False, "noise_init": 0.2})
    fixed._gap = torch.tensor(1.0)
    fixed.after_step(ctx)
    assert fixed.eps.item() == pytest.approx(0.2)
    # The D phase reports the gap it measured and the eps it used.
    loss, scalars = steps.d(ctx)
    assert torch.isfinite(loss) and scalars["noise/eps"].item() == pytest.approx(steps.eps.item())
    assert scalars["noise/gap"].item() == pytest.approx((scalars["D(x)"] - scalars["D(G(z))"]).item())


# ============================================================================ runs

def test_video_covers_a_resumed_run_and_samples_are_full_size(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.loop import train

    tick = {"tick_kimg": 0.008}
    train(family_cfg("progressive", synthetic_shards, tmp_path / "split", train={"total_kimg": 0.024, **tick}))
    assert count_frames(tmp_path / "split" / "video.mp4") == 3
    metrics = train(family_cfg("progressive", synthetic_shards, tmp_path / "split", train={"resume": "latest", **tick}))
    frames = sorted_frames(tmp_path / "split" / "video")
    assert [seen for seen, _ in frames] == [8, 16, 24, 32, 40, 48]   # one per tick, both halves
    assert count_frames(tmp_path / "split" / "video.mp4") == 6
    import av

    with av.open(str(tmp_path / "split" / "video.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    # 4 samples of 32 px in one row with 2 px gaps, under a 14 px caption strip.
    assert first.shape == (14 + 32 + 4, 4 * 34 + 2, 3)
    assert metrics["progressive/resolution"] == 32 and metrics["progressive/stage"] == 2
    state, meta = final_state(tmp_path / "split")
    assert state["G"]["level"].item() == 2 and state["G_ema"]["level"].item() == 2
    assert "eps" in state["family"]


@pytest.mark.slow
def test_two_rank_ddp_through_fade_and_stable_keeps_eps_identical(synthetic_shards: Path, tmp_path: Path) -> None:
    # 5 steps of 2 x 8: stages 0, 1 (fade), 1, 2 (stable: the old toRGB/fromRGB frozen), 2.
    cfg = family_cfg("progressive", synthetic_shards, tmp_path / "ddp",
                     gan={"stable_kimg": 0.016, "fade_kimg": 0.032, "noise_init": 0.5},
                     train={"total_kimg": 0.080, "tick_kimg": 0.080, "checkpoint_kimg": 0.080})
    steps = FAMILY.build_steps(cfg, DataInfo())
    assert [steps.stage(k * 0.016) for k in range(5)] == [0, 1, 1, 2, 2]
    run_ranks(_eps_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "ranks.pt", weights_only=True)
    torch.testing.assert_close(got["params0"], got["params1"], rtol=0, atol=0)
    # eps moved (from 0.5, unclipped either way) by the same all-reduced gaps on both ranks.
    assert got["eps0"] == got["eps1"] and got["eps0"] != 0.5
    state, meta = final_state(tmp_path / "ddp")
    assert meta["step"] == 5 and state["family"]["eps"].item() == got["eps0"]


def _eps_worker(rank: int, world: int, cfg_dict: dict, result_dir: str) -> None:
    import torch.distributed as dist

    from facegan.config import from_dict
    from facegan.families import RunConfig
    from facegan.hooks import Hooks
    from facegan.loop import train

    bare: list[torch.nn.Module] = []

    def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        bare.append(module)
        return torch.nn.parallel.DistributedDataParallel(module)   # find_unused_parameters=False

    metrics = train(from_dict(RunConfig, cfg_dict), hooks=Hooks(rank=rank, world_size=world, wrap_model=wrap))
    flat = torch.cat([p.detach().flatten() for m in bare[-2:] for p in m.parameters()])
    everyone = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    eps = [None] * world
    dist.all_gather_object(eps, metrics["noise/eps"])
    if rank == 0:
        torch.save({"params0": everyone[0], "params1": everyone[1], "eps0": eps[0], "eps1": eps[1]},
                   Path(result_dir) / "ranks.pt")


@pytest.mark.slow
def test_two_worker_ray_run_on_utkface_layout(ray_cluster: Any, tmp_path: Path) -> None:
    from conftest import make_utkface
    from facegan.config import from_dict
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards
    from facegan.families import RunConfig
    from facegan.launch.trainer import run_training
    from facegan.checkpoint import load_checkpoint

    make_utkface(tmp_path / "utk", n=40)
    recipe = from_dict(ShardRecipe, {"source": "utkface", "resolution": 32, "shard_size": 8, "seed": 0,
                                     "val_fraction": 0.1, "test_fraction": 0.1})
    build_shards(recipe, root=tmp_path / "utk", out=tmp_path / "shards", progress=False)
    cfg = family_cfg("progressive", tmp_path / "shards", tmp_path / "run",
                     data={"shuffle_buffer": 16},
                     train={"total_kimg": 0.064, "tick_kimg": 0.016, "checkpoint_kimg": 0.032,
                            "deterministic": False},
                     ray={"num_workers": 2, "max_failures": 0})
    cfg = from_dict(RunConfig, to_dict(cfg))
    result = run_training(cfg, config_dict=to_dict(cfg))
    assert result["metrics"]["step"] == 4 and result["metrics"]["progressive/resolution"] == 32
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert meta["world_size"] == 2 and meta["family"] == "progressive" and state["G"]["level"].item() == 2
    assert count_frames(tmp_path / "run" / "video.mp4") == 4


def test_discriminator_takes_full_size_images_at_a_lower_level() -> None:
    torch.manual_seed(0)
    D = Discriminator(resolution=32, base_size=4, width=5)
    D.set_stage(level=2, alpha=1.0)                     # 16 px
    img = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(D(img), D(torch.nn.functional.avg_pool2d(img, 2)))
    for bad in (torch.rand(2, 3, 24, 24), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 64, 64), torch.rand(2, 3, 16, 8)):
        with pytest.raises(ValueError, match="expected images"):
            D(bad)


def test_exact_resume_at_a_growth_boundary(synthetic_shards: Path, tmp_path: Path) -> None:
    """Split exactly where a stage begins: the resumed run must clear Adam's moments as the
    uninterrupted one does at that step (the checkpoint holds the previous stage's)."""
    from facegan.loop import train

    gan = {"stable_kimg": 0.024, "fade_kimg": 0.016}           # stage 1 starts at the split, 0.024 kimg
    train(family_cfg("progressive", synthetic_shards, tmp_path / "full", gan=gan))
    train(family_cfg("progressive", synthetic_shards, tmp_path / "split", gan=gan, train={"total_kimg": 0.024}))
    train(family_cfg("progressive", synthetic_shards, tmp_path / "split", gan=gan, train={"resume": "latest"}))
    a, _ = final_state(tmp_path / "full")
    b, _ = final_state(tmp_path / "split")
    for net in ("G", "D", "G_ema"):
        for k, t in a[net].items():
            torch.testing.assert_close(t, b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
