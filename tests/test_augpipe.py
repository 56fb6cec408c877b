"""The augmentation pipe (facegan.augpipe), the `augment:` section's checks and R1 (facegan.losses).

The ops are compared with DiffAugment's own formulation (mit-han-lab/data-efficient-gans: an index
grid into the image padded by one zero; a mask written by index), ADA's p with its update rule,
R1 with a hand computation and, under 2-rank gloo DDP, with one process on the joint batch.

    .venv/bin/python -m pytest -q tests/test_augpipe.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from facegan.augpipe import (AugmentPipe, AugmentedNet, contrast, cutout, saturation, translate, unwrap)
from facegan.config import AugmentConfig, ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.losses import bce_logits, r1_penalty


def pipe(**kw: Any) -> AugmentPipe:
    return AugmentPipe(from_dict(AugmentConfig, kw))


def images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- the ops against DiffAugment's formulation

def reference_translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    gx = torch.clamp(gx + tx.view(b, 1, 1) + 1, 0, h + 1)
    gy = torch.clamp(gy + ty.view(b, 1, 1) + 1, 0, w + 1)
    pad = nn.functional.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def reference_cutout(x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, _, h, w = x.shape
    gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    gx = torch.clamp(gx + ox.view(b, 1, 1) - size[0] // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy.view(b, 1, 1) - size[1] // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def test_translation_is_diffaugments_shift_with_zeros_shifted_in() -> None:
    x = images(n=7, size=16)
    tx = torch.tensor([-2, -1, 0, 1, 2, 5, -17])      # beyond the image: all zeros
    ty = torch.tensor([2, 0, -2, 1, -1, -3, 0])
    got = translate(x, tx, ty)
    torch.testing.assert_close(got, reference_translate(x, tx, ty), rtol=0, atol=0)
    torch.testing.assert_close(got[3, :, :-1, :-1], x[3, :, 1:, 1:], rtol=0, atol=0)
    assert got[6].abs().sum() == 0


def test_cutout_is_diffaugments_mask_clipped_at_the_border() -> None:
    x = images(n=6, size=16)
    size = (8, 8)
    ox = torch.tensor([0, 3, 8, 15, 16, 1])
    oy = torch.tensor([16, 0, 8, 4, 2, 15])
    got = cutout(x, ox, oy, size=size)
    torch.testing.assert_close(got, reference_cutout(x, ox, oy, size), rtol=0, atol=0)
    odd = images(n=3, size=15)
    o = torch.tensor([0, 7, 14])
    torch.testing.assert_close(cutout(odd, o, o.flip(0), size=(8, 8)), reference_cutout(odd, o, o.flip(0), (8, 8)),
                               rtol=0, atol=0)


def test_colour_ops_are_the_papers_formulas() -> None:
    x = images(n=2)
    u = torch.tensor([0.25, 1.0])
    m = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(saturation(x, u), (x - m) * (2 * u).view(-1, 1, 1, 1) + m)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(contrast(x, u), (x - mean) * (u + 0.5).view(-1, 1, 1, 1) + mean)


# --- the pipe

def test_kind_none_is_the_identity_and_draws_nothing() -> None:
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    x = images()
    p = pipe()
    assert p(x, generator=g) is x and torch.equal(g.get_state(), before)
    nets = {"D": nn.Identity()}
    assert p.wrap(nets, ("D",), generator=g)["D"] is nets["D"]
    assert p.state_dict() == {} and p.tick_metrics() == {} and p.curves == ()


@pytest.mark.parametrize("kind", ["diffaugment", "ada"])
def test_pipe_is_seeded_by_the_generator_and_changes_every_sample(kind: str) -> None:
    p = pipe(kind=kind, **({"p": 1.0} if kind == "ada" else {}))
    x = images(n=8)
    a = p(x, generator=torch.Generator().manual_seed(1))
    b = p(x, generator=torch.Generator().manual_seed(1))
    c = p(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert all(not torch.equal(a[i], x[i]) for i in range(8))


def test_pipe_is_differentiable_twice_with_respect_to_its_input() -> None:
    p = pipe(kind="diffaugment", policy=["color", "translation", "cutout", "xflip"])
    x = images(n=3, size=8).double().requires_grad_(True)

    def f(t: torch.Tensor) -> torch.Tensor:
        return p(t, generator=torch.Generator().manual_seed(4))

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(lambda t: f(t).square(), (x,))


def test_ada_gate_passes_every_sample_unchanged_at_p_zero() -> None:
    p = pipe(kind="ada", adaptive=False, p=1.0)
    p.p = torch.tensor(0.0)
    x = images()
    torch.testing.assert_close(p(x, generator=torch.Generator().manual_seed(0)), x, rtol=0, atol=0)


def test_wrapped_net_sees_augmented_images_and_unwraps() -> None:
    p = pipe(kind="diffaugment", policy=["translation"])
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            seen.append(x)
            return x.sum() * scale

    probe = Probe()
    wrapped = p.wrap({"D": probe, "G": nn.Identity()}, ("D",), generator=torch.Generator().manual_seed(5))
    assert isinstance(wrapped["D"], AugmentedNet) and not isinstance(wrapped["G"], AugmentedNet)
    x = images()
    wrapped["D"](x, scale=2.0)
    torch.testing.assert_close(seen[0], p(x, generator=torch.Generator().manual_seed(5)), rtol=0, atol=0)
    assert unwrap(wrapped["D"]) is probe and not list(wrapped["D"].parameters())


def test_ada_p_follows_the_sign_of_rt_minus_target_and_restores_exactly() -> None:
    p = pipe(kind="ada", p=0.5, target=0.6, speed_kimg=1.0, interval=2)
    acc = {"acc/d_real": torch.tensor(0.9)}   # r_t = 0.8 > 0.6: D overfits, p goes up
    p.observe(acc, ok=True, step=1, images=100)
    assert float(p.p) == 0.5                                   # not at an interval's end
    saved = p.state_dict()
    p.observe(acc, ok=True, step=2, images=100)
    assert float(p.p) == pytest.approx(0.5 + 200 / 1000)
    assert p.tick_metrics()["augment_rt"] == pytest.approx(0.8)
    q = pipe(kind="ada", p=0.5, target=0.6, speed_kimg=1.0, interval=2)
    q.load_state_dict(saved)
    q.observe(acc, ok=True, step=2, images=100)
    torch.testing.assert_close(q.p, p.p, rtol=0, atol=0)
    low = {"acc/d_real": torch.tensor(0.5)}                    # r_t = 0 < 0.6: p goes down, clipped at 0
    for step in range(3, 13):
        p.observe(low, ok=True, step=step, images=100)
    assert float(p.p) == 0.0
    # A skipped step (ok 0) does not count; an interval of only skipped steps leaves p alone.
    r = pipe(kind="ada", p=0.5, interval=1)
    r.observe(acc, ok=torch.tensor(0.0), step=1, images=100)
    assert float(r.p) == 0.5
    fixed = pipe(kind="ada", p=0.3, adaptive=False)
    fixed.observe(acc, ok=True, step=4, images=100)
    assert float(fixed.p) == pytest.approx(0.3) and fixed.curves == (("augment_p",),)


# --- the augment: section and the families' refusals

@pytest.mark.parametrize("section, message", [
    ({"kind": "diffaugment", "policy": ["colour"]}, "augment.policy: unknown ops"),
    ({"kind": "diffaugment", "policy": ["color", "color"]}, "listed twice"),
    ({"kind": "none", "policy": ["color"]}, "augment.policy: kind none"),
    ({"kind": "diffaugment", "p": 0.5}, "augment.p: only kind ada"),
    ({"kind": "ada", "target": 1.5}, "augment.target"),
    ({"kind": "ada", "interval": 0}, "augment.interval"),
    ({"kind": "ada", "adaptive": False}, "augment.p: kind ada with adaptive: false"),
    ({"kind": "flip"}, "augment.kind: expected one of"),
])
def test_bad_augment_sections_are_refused_naming_the_field(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, {"data": {"shards": "x"}, "augment": section})


def test_default_policies() -> None:
    assert from_dict(AugmentConfig, {"kind": "diffaugment"}).policy == ["color", "translation", "cutout"]
    assert from_dict(AugmentConfig, {"kind": "ada"}).policy == ["xflip", "translation", "color"]


@pytest.mark.parametrize("family, kind, why", [
    ("vae", "diffaugment", "no discriminator"), ("classifier", "ada", "no discriminator"),
    ("predictor", "diffaugment", "no discriminator"), ("began", "ada", "autoencoder"),
    ("infobegan", "ada", "autoencoder"), ("wgangp", "ada", "not logits"),
])
def test_families_refuse_kinds_by_name(family: str, kind: str, why: str) -> None:
    data: dict[str, Any] = {"data": {"shards": "x"}, "model": {"family": family}, "augment": {"kind": kind}}
    data.update({k: v for k, v in FAMILIES[family].smoke.items() if k != "model"})
    data["model"].update(FAMILIES[family].smoke.get("model", {}))
    with pytest.raises(ConfigError, match=f"augment.kind: {kind} is not available for the {family} family .*{why}"):
        from_dict(RunConfig, data)


def test_every_family_that_takes_ada_reports_the_real_logit_accuracy() -> None:
    for family in FAMILIES.values():
        assert family.augment_kinds[0] == "none"
        if "ada" in family.augment_kinds:
            assert family.discriminator and "acc/d_real" in family.metrics, family.name


# --- R1

def test_r1_of_a_linear_d_is_its_squared_weight_norm_and_lazy_weights() -> None:
    w = torch.randn(3 * 4 * 4)
    x = images(n=5, size=4).requires_grad_(True)
    logits = x.flatten(1) @ w
    torch.testing.assert_close(r1_penalty(logits, x), w.square().sum().expand(5))
    opts = from_dict(RunConfig, {"data": {"shards": "x"}, "gan": {"r1_gamma": 10.0, "r1_interval": 4}}).gan
    assert [opts.r1_weight(s) for s in range(5)] == [20.0, 0.0, 0.0, 0.0, 20.0]
    with pytest.raises(ConfigError, match="gan.r1_interval"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "gan": {"r1_gamma": 1.0, "r1_interval": 0}})
    with pytest.raises(ConfigError, match="train.precision: fp16 is not supported with gan.r1_gamma"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "gan": {"r1_gamma": 1.0}, "train": {"precision": "fp16"}})


def make_d() -> nn.Module:
    from facegan.families.dcgan.nets import build_dcgan, dcgan_init_

    torch.manual_seed(0)
    d = build_dcgan(resolution=16, z_dim=4, base_channels=4, d_batchnorm=False)["D"]
    dcgan_init_(d)
    return d


def r1_d_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, weight: float) -> torch.Tensor:
    """DCGAN's D loss with R1 as its phase computes it: one forward of the reals, the penalty's
    gradient with respect to them, then the caller's one backward."""
    real_in = real.detach().requires_grad_(True)
    logits = D(real_in)
    return bce_logits(logits, 1.0) + bce_logits(D(fake), 0.0) + weight * r1_penalty(logits, real_in).mean()


def joint_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, torch.randn(8, 3, 16, 16, generator=g) * 0.3


def _r1_worker(rank: int, world: int, result_dir: str) -> None:
    import torch.distributed as dist

    real, fake = joint_batch()
    mine = slice(rank * 4, (rank + 1) * 4)
    D = make_d()
    ddp = torch.nn.parallel.DistributedDataParallel(D)   # find_unused_parameters=False, as Ray's
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    for weight in (5.0, 0.0, 5.0):     # lazy R1: steps with and without the double backward
        opt.zero_grad()
        r1_d_loss(ddp, real[mine], fake[mine], weight=weight).backward()
        opt.step()
    params = torch.cat([p.detach().flatten() for p in D.parameters()])
    everyone = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(everyone, params)
    if rank == 0:
        torch.save(everyone, Path(result_dir) / "r1.pt")


@pytest.mark.slow
def test_r1_under_ddp_equals_one_process_on_the_joint_batch(tmp_path: Path) -> None:
    from ranks import run_ranks

    run_ranks(_r1_worker, str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "r1.pt", weights_only=True)
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)
    real, fake = joint_batch()
    D = make_d()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    for weight in (5.0, 0.0, 5.0):
        opt.zero_grad()
        r1_d_loss(D, real, fake, weight=weight).backward()
        opt.step()
    torch.testing.assert_close(got[0], torch.cat([p.detach().flatten() for p in D.parameters()]),
                               rtol=1e-4, atol=1e-6)
    untouched = make_d()
    assert not torch.allclose(got[0], torch.cat([p.detach().flatten() for p in untouched.parameters()]))


# --- the small training sets of data-efficiency runs

def test_train_limit_keeps_a_seeded_share_of_train_and_every_val_and_test_face(tmp_path: Path) -> None:
    from facegan.data.recipe import ShardRecipe
    from facegan.data.stream import ShardSet
    from facegan.data.writer import build_shards

    def build(name: str, **extra: Any) -> ShardSet:
        recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 60, "resolution": 16, "shard_size": 8,
                                         **extra})
        build_shards(recipe, root=None, out=tmp_path / name, progress=False)
        return ShardSet.open(str(tmp_path / name))

    whole, small, again = build("whole"), build("small", train_limit=10), build("again", train_limit=10)
    assert small.count("train") == 10 < whole.count("train")
    assert (small.count("val"), small.count("test")) == (whole.count("val"), whole.count("test"))
    def train_keys(shard_set: ShardSet) -> list[str]:
        return [s["keys_sha256"] for s in shard_set.manifest["shards"] if s["split"] == "train"]

    assert train_keys(small) == train_keys(again) != train_keys(build("other", train_limit=10, seed=1))
    assert build("all", train_limit=1000).count("train") == whole.count("train")


# --- sweeps over augmentation and R1

def test_sweeps_search_augmentation_and_r1_and_refuse_bad_values(tmp_path: Path, synthetic_shards: Path) -> None:
    import yaml

    from facegan.sweeps.spec import load_sweep

    repo = Path(__file__).resolve().parents[1]
    sweep = {"name": "aug", "family": "dcgan", "base": str(repo / "configs" / "dcgan_demo.yaml"),
             "config": {"data": {"shards": str(synthetic_shards)}, "augment": {"kind": "ada"}},
             "space": {"augment.target": {"grid": [0.5, 0.7]},
                       "augment.policy": {"grid": [["xflip"], ["color", "translation"]]},
                       "gan.r1_gamma": {"grid": [0.0, 1.0]}},
             "objective": {"metric": "loss/g", "mode": "min"}, "out": str(tmp_path / "out")}
    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump(sweep))
    plan = load_sweep(path)
    assert plan.num_trials == 8
    trial = plan.trial_config(plan.points[-1], trial_id="t7")
    assert trial["augment"] == {"kind": "ada", "target": 0.7, "policy": ["color", "translation"]}
    assert trial["gan"]["r1_gamma"] == 1.0
    with pytest.raises(ConfigError, match=r"augment.policy.*unknown ops \['rotate'\]"):
        load_sweep(path, overrides=["space.augment.policy.grid=[[rotate]]"])
    with pytest.raises(ConfigError, match="augment.kind: ada is not available for the wgangp family"):
        load_sweep(path, overrides=["family=wgangp", "base=" + str(repo / "configs" / "wgangp_celeba64.yaml"),
                                    "space={augment.target: {grid: [0.6]}}"])


def test_sweep_report_ranks_by_the_face_metric_once_trials_report_it(tmp_path: Path) -> None:
    import json

    from facegan.sweeps.report import load_results

    (tmp_path / "sweep_spec.json").write_text(json.dumps({
        "spec": {"objective": {"metric": "fid_attr", "mode": "min"}, "space": {"augment.kind": {}}},
        "base": {"train": {"total_kimg": 1}}}))

    def trial(name: str, **last: float) -> None:
        d = tmp_path / "trials" / name
        d.mkdir(parents=True)
        (d / "trial.json").write_text(json.dumps({"trial_id": name, "params": {"augment.kind": name}}))
        (d / "results.jsonl").write_text(json.dumps({"kimg": 1, **last}) + "\n")

    trial("none", fid_attr=10.0)
    trial("diffaugment", fid_attr=20.0)
    res = load_results(tmp_path)
    assert res.rank_metric == "fid_attr" and [t.trial_id for t in res.ranked()] == ["none", "diffaugment"]
    for name, face in (("none", 30.0), ("diffaugment", 15.0)):
        rows = tmp_path / "trials" / name / "results.jsonl"
        last = json.loads(rows.read_text())
        rows.write_text(json.dumps({**last, "fid_face": face}) + "\n")
    res = load_results(tmp_path)
    assert res.rank_metric == "fid_face" and [t.trial_id for t in res.ranked()] == ["diffaugment", "none"]


def test_data_efficiency_report_reads_runs_and_ratios_against_the_unaugmented_run(tmp_path: Path) -> None:
    """benchmarks/bench_data_efficiency.py report on hand-made run folders: best/last per run, the
    metric turning back up (last/best), each run against its group's `_none` run, ADA's p, the
    memorisation ratio of the last evaluation, the plot."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    def write(name: str, fids: list[float], p: list[float] | None = None) -> None:
        run = tmp_path / name
        run.mkdir()
        rows = [{"kind": "step", "kimg": 0.1, "loss/d": 1.0}]
        for i, fid in enumerate(fids):
            row = {"kind": "tick", "kimg": 3.0 * (i + 1), "img_per_sec": 50.0, "fid_attr": fid,
                   "memorisation_ratio_attr": 0.9 + 0.01 * i}
            if p is not None:
                row["augment_p"] = p[i]
            rows.append(row)
        (run / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("g_none", [90.0, 40.0, 60.0])
    write("g_ada", [95.0, 45.0, 30.0], p=[0.1, 0.2, 0.3])
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_data_efficiency.py"), "report",
                          str(tmp_path / "g_none"), str(tmp_path / "g_ada"), "--json", str(tmp_path / "t.json"),
                          "--plot", str(tmp_path / "t.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = {r["run"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert table["g_none"]["best"] == 40.0 and table["g_none"]["last_over_best"] == pytest.approx(1.5)
    assert table["g_ada"]["last_vs_none"] == pytest.approx(0.5) and table["g_ada"]["best_kimg"] == 9.0
    assert table["g_ada"]["augment_p"][-1] == [9.0, 0.3] and table["g_none"]["augment_p"] == []
    assert table["g_none"]["memorisation_ratio"] == pytest.approx(0.92)
    assert (tmp_path / "t.png").stat().st_size > 1000 and "g_ada" in out.stdout
