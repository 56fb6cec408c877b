"""DCGAN family: net shapes and sizes, BCE and label tricks against hand computations, instance
noise, gradient isolation between the phases, determinism, and a tiny training run that must learn.

    .venv/bin/python -m pytest tests/test_dcgan.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facegan.losses import bce_logits, d_accuracy, d_targets, instance_noise
from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo, Family, Phase
from facegan.families.dcgan import DCGANOptions
from facegan.families.dcgan.nets import DCGANDiscriminator, DCGANGenerator, build_dcgan, dcgan_init_
from facegan.families.dcgan.steps import DCGANSteps

SPEC = FAMILIES["dcgan"]


def make_steps(**options) -> DCGANSteps:
    """DCGAN's phases for a run config whose gan: section is `options`."""
    return DCGANSteps(from_dict(RunConfig, {"data": {"shards": "unused"}, "gan": options}))


def tiny_nets(*, resolution: int = 16, z_dim: int = 16, seed: int = 0, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    nets = build_dcgan(resolution=resolution, z_dim=z_dim, base_channels=8, **kw)
    for net in nets.values():
        dcgan_init_(net)
    return nets["G"], nets["D"]


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FixedLogitsD(nn.Module):
    """A D stub whose logit for an image is the image's mean: tests choose the logits exactly."""

    def forward(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        return img_BCHW.mean(dim=(1, 2, 3))


class ConstantG(nn.Module):
    """A G stub that paints each image with the first latent coordinate."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.z_dim = 4

    def forward(self, z_BZ: torch.Tensor) -> torch.Tensor:
        return (self.scale * z_BZ[:, 0]).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


# --- registry and architecture

def test_registry_holds_dcgan_family():
    cfg = from_dict(RunConfig, {"data": {"shards": "unused"}, "gan": {"label_smoothing": 0.1}})
    assert isinstance(SPEC, Family) and SPEC.name == "dcgan" and cfg.family is SPEC
    assert isinstance(SPEC.build_steps(cfg, DataInfo()), DCGANSteps)
    assert SPEC.phases(cfg) == [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]
    assert {k: (v.nets, v.lr, v.betas) for k, v in SPEC.optimizers(cfg).items()} == {
        "G": (("G",), 2e-4, (0.5, 0.999)), "D": (("D",), 2e-4, (0.5, 0.999))}
    other = from_dict(RunConfig, {"data": {"shards": "unused"}, "optim": {"g_lr": 1e-4, "d_lr": 3e-4}})
    assert {k: v.lr for k, v in SPEC.optimizers(other).items()} == {"G": 1e-4, "D": 3e-4}
    nets = SPEC.build_nets(cfg, DataInfo())
    assert set(nets) == {"G", "D"}
    assert nets["G"].z_dim == 100 and nets["G"].resolution == 64 and nets["D"].resolution == 64


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
def test_shapes_and_ranges(resolution):
    G, D = tiny_nets(resolution=resolution)
    z_BZ = torch.randn(3, G.z_dim)
    img_BCHW = G(z_BZ)
    assert img_BCHW.shape == (3, 3, resolution, resolution)
    assert img_BCHW.abs().max() <= 1.0
    assert img_BCHW.std() > 0  # not a dead net
    logits_B = D(img_BCHW)
    assert logits_B.shape == (3,)
    assert torch.isfinite(logits_B).all()
    # One block per octave: the 4x4 stem is widest, base_channels at the last hidden layer.
    octaves = int(math.log2(resolution)) - 2
    g_convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in g_convs] == [8 * 2 ** i for i in reversed(range(octaves))] + [3]
    assert [c.out_channels for c in d_convs] == [8 * 2 ** i for i in range(octaves)] + [1]


def test_default_64px_parameter_counts_match_dcgan_reference():
    nets = build_dcgan()
    # The PyTorch DCGAN example has 3,576,704 / 2,765,568; we add biases to the convs that no
    # batch norm follows: G's output conv (+3), D's first conv (+64) and logit conv (+1).
    assert num_params(nets["G"]) == 3_576_707
    assert num_params(nets["D"]) == 2_765_633


def test_batchnorm_switches_and_dropout():
    G, D = tiny_nets(g_batchnorm=False, d_batchnorm=False, d_dropout=0.3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [*G.modules(), *D.modules()])
    assert all(c.bias is not None for c in G.modules() if isinstance(c, nn.ConvTranspose2d))
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]  # 2 hidden blocks at 16px
    G_bn, D_bn = tiny_nets()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G_bn.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D_bn.modules()) == 1  # none on D's first conv
    assert not any(isinstance(m, nn.Dropout) for m in D_bn.modules())
    # Dropout is live in train mode and off in eval mode.
    img_BCHW = G(torch.randn(4, 16))
    D.train()
    assert not torch.equal(D(img_BCHW), D(img_BCHW))
    D.eval()
    torch.testing.assert_close(D(img_BCHW), D(img_BCHW))


@pytest.mark.parametrize("resolution", [48, 8, 100, 0, 64.0])
def test_bad_resolution_names_field_and_allowed_values(resolution):
    with pytest.raises(ValueError, match=r"resolution must be a power of two >= 16 \(32, 64, 128"):
        build_dcgan(resolution=resolution)


def test_wrong_input_shapes_are_errors():
    G, D = tiny_nets()
    with pytest.raises(ValueError, match="z of shape"):
        G(torch.randn(2, 17))
    with pytest.raises(ValueError, match="images of shape"):
        D(torch.randn(2, 3, 32, 32))


def test_dcgan_init_matches_paper():
    torch.manual_seed(0)
    G = DCGANGenerator(resolution=32, base_channels=32)
    D = DCGANDiscriminator(resolution=32, base_channels=32)
    for net in (G, D):
        dcgan_init_(net)
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        weights = torch.cat([c.weight.flatten() for c in convs])
        assert abs(weights.mean().item()) < 2e-3 and abs(weights.std().item() - 0.02) < 1e-3
        assert all(c.bias is None or not c.bias.any() for c in convs)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scales = torch.cat([b.weight for b in bns])
        assert abs(scales.mean().item() - 1) < 0.01 and 0.01 < scales.std().item() < 0.03
        assert not torch.cat([b.bias for b in bns]).any()


# --- losses

def test_bce_logits_matches_functional_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, generator=gen) * 10).requires_grad_()
    logits[:2].data.copy_(torch.tensor([60.0, -60.0]))  # stability at the extremes
    for target in (torch.rand(64, generator=gen), torch.zeros(64), torch.ones(64)):
        ours = bce_logits(logits, target)
        ref = F.binary_cross_entropy_with_logits(logits, target)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])
    torch.testing.assert_close(bce_logits(logits, 0.9), F.binary_cross_entropy_with_logits(logits, torch.full((64,), 0.9)))
    torch.testing.assert_close(bce_logits(torch.zeros(5), 1.0), torch.tensor(math.log(2)))


def test_d_accuracy():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    torch.testing.assert_close(d_accuracy(logits, real=True), torch.tensor(0.5))
    torch.testing.assert_close(d_accuracy(torch.tensor([-1.0, -2.0, 3.0]), real=False), torch.tensor(2 / 3))


def hand_bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_d_step_label_smoothing_hand_computation():
    real_logits = [1.5, -0.5, 3.0, 0.2]
    z_first = [-2.0, 0.7, -1.0, 0.0]  # ConstantG paints these, FixedLogitsD returns them as logits
    real_BCHW = torch.tensor(real_logits).view(4, 1, 1, 1).expand(4, 3, 8, 8)
    z_BZ = torch.zeros(4, 4)
    z_BZ[:, 0] = torch.tensor(z_first)
    for s in (0.0, 0.1, 0.3):
        steps = make_steps(label_smoothing=s)
        loss, scalars = steps.d_step(G=ConstantG(), D=FixedLogitsD(), real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=0.0)
        want_real = sum(hand_bce(l, 1 - s) for l in real_logits) / 4
        want_fake = sum(hand_bce(l, 0.0) for l in z_first) / 4  # smoothing is one-sided
        torch.testing.assert_close(scalars["loss/d_real"], torch.tensor(want_real))
        torch.testing.assert_close(scalars["loss/d_fake"], torch.tensor(want_fake))
        torch.testing.assert_close(loss, torch.tensor(want_real + want_fake))
        torch.testing.assert_close(scalars["D(x)"], torch.sigmoid(torch.tensor(real_logits)).mean())
        torch.testing.assert_close(scalars["D(G(z))"], torch.sigmoid(torch.tensor(z_first)).mean())
        torch.testing.assert_close(scalars["acc/d_real"], torch.tensor(0.75))
        torch.testing.assert_close(scalars["acc/d_fake"], torch.tensor(0.5))
    # The G step's non-saturating loss ignores smoothing: target 1.
    _, g_scalars = make_steps(label_smoothing=0.3).g_step(G=ConstantG(), D=FixedLogitsD(), z_BZ=z_BZ, kimg=0.0)
    torch.testing.assert_close(g_scalars["loss/g"], torch.tensor(sum(hand_bce(l, 1.0) for l in z_first) / 4))


def test_label_flip_validation_and_rate():
    with pytest.raises(ValueError, match=r"label_flip must be in \[0, 0.5\)"):
        make_steps(label_flip=1.0)
    gamma = 0.49
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(4000)
    real_t = d_targets(logits, real=True, smoothing=0.1, flip=gamma, generator=gen)
    fake_t = d_targets(logits, real=False, smoothing=0.1, flip=gamma, generator=gen)
    for targets in (real_t, fake_t):
        torch.testing.assert_close(targets.unique(), torch.tensor([0.0, 0.9]))
    # Binomial std at n=4000 is 0.008: 0.04 is five sigma, and a whole-batch flip would give 0 or 1.
    assert abs((real_t == 0).float().mean().item() - gamma) < 0.04
    assert abs((fake_t > 0).float().mean().item() - gamma) < 0.04
    assert not (d_targets(logits, real=True, smoothing=0.1) == 0).any()  # no flips by default

    # Through the D step: reals at logit 10 cost ~10 when flipped and ~0 otherwise.
    steps = make_steps(label_flip=gamma)
    real_BCHW = torch.full((4000, 3, 2, 2), 10.0)
    _, scalars = steps.d_step(G=ConstantG(), D=FixedLogitsD(), real_BCHW=real_BCHW, z_BZ=torch.zeros(4000, 4),
                              kimg=0.0, generator=torch.Generator().manual_seed(1))
    assert abs(scalars["loss/d_real"].item() / 10 - gamma) < 0.04


@pytest.mark.parametrize("options, field", [
    ({"label_smoothing": 0.5}, "label_smoothing"), ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"label_flip": -0.01}, "label_flip"), ({"d_noise_power": -1.0}, "d_noise_power"),
    ({"d_noise_anneal_kimg": -5}, "d_noise_anneal_kimg"), ({"d_noise_power": float("nan")}, "d_noise_power"),
    ({"label_smoothing": "0.1"}, "label_smoothing"),
])
def test_options_validation_names_field(options, field):
    with pytest.raises(ValueError, match=field):
        DCGANOptions(**options)


def test_unknown_option_is_an_error():
    with pytest.raises(ConfigError, match="unknown key gan.label_smothing"):
        make_steps(label_smothing=0.1)


def test_d_noise_std_annealing():
    steps = make_steps(d_noise_power=1 / 15, d_noise_anneal_kimg=10.0)
    assert steps.d_noise_std(0.0) == pytest.approx(math.sqrt(1 / 15))
    assert steps.d_noise_std(5.0) == pytest.approx(math.sqrt(1 / 30))  # the power (variance) is linear
    assert steps.d_noise_std(10.0) == 0.0
    assert steps.d_noise_std(25.0) == 0.0
    fixed = make_steps(d_noise_power=1 / 20)
    assert fixed.d_noise_std(0.0) == fixed.d_noise_std(1e6) == pytest.approx(math.sqrt(1 / 20))
    assert make_steps().d_noise_std(3.0) == 0.0


def test_instance_noise_reaches_d_on_reals_and_fakes_with_the_right_std():
    seen: list[torch.Tensor] = []

    class RecordingD(nn.Module):
        def forward(self, img_BCHW):
            seen.append(img_BCHW.detach().clone())
            return img_BCHW.mean(dim=(1, 2, 3))

    steps = make_steps(d_noise_power=1 / 15, d_noise_anneal_kimg=10.0)
    real_BCHW = torch.full((64, 3, 8, 8), 0.5)
    z_BZ = torch.zeros(64, 4)  # ConstantG paints zeros
    gen = torch.Generator().manual_seed(0)
    steps.d_step(G=ConstantG(), D=RecordingD(), real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=5.0, generator=gen)
    steps.g_step(G=ConstantG(), D=RecordingD(), z_BZ=z_BZ, kimg=5.0, generator=gen)
    real_in, fake_in, g_fake_in = seen
    want = math.sqrt(1 / 30)
    for noise in (real_in - 0.5, fake_in, g_fake_in[:, :, :4, :4]):
        assert abs(noise.std().item() - want) < 0.01 and abs(noise.mean().item()) < 0.01
    assert not torch.equal(real_in - 0.5, fake_in)  # independent draws
    assert instance_noise(real_BCHW, std=0.0) is real_BCHW


# --- phases: gradients and determinism

def test_d_step_grads_reach_d_only_and_g_step_reaches_g():
    G, D = tiny_nets()
    steps = make_steps(label_smoothing=0.1, label_flip=0.05, d_noise_power=0.05)
    real_BCHW = torch.rand(8, 3, 16, 16) * 2 - 1
    loss, scalars = steps.d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=torch.randn(8, 16), kimg=0.0)
    assert loss.ndim == 0
    for value in scalars.values():
        assert value.ndim == 0 and not value.requires_grad
    loss.backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())

    D.zero_grad(set_to_none=True)
    loss, scalars = steps.g_step(G=G, D=D, z_BZ=torch.randn(8, 16), kimg=0.0)
    assert set(scalars) == {"loss/g", "D(G(z))_g"}
    assert all(not v.requires_grad and v.ndim == 0 for v in scalars.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_carry_hands_d_step_fakes_to_g_step():
    """With `carry`, G runs once per step: D's loss still leaves G without grads, and g_step scores
    the very fakes d_step drew (same loss as running G again on the same z)."""
    G, D = tiny_nets()
    G.eval()  # batch-norm in eval: a second G forward on the same z gives the same fakes
    steps = make_steps()
    real_BCHW, z_BZ = torch.rand(8, 3, 16, 16) * 2 - 1, torch.randn(8, 16)
    carry: dict[str, torch.Tensor] = {}
    d_loss, _ = steps.d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=0.0, carry=carry)
    assert carry["fake_BCHW"].requires_grad
    d_loss.backward()
    assert all(p.grad is None for p in G.parameters())
    calls = []
    handle = G.register_forward_hook(lambda *_: calls.append(1))
    g_loss, _ = steps.g_step(G=G, D=D, z_BZ=z_BZ, kimg=0.0, carry=carry)
    assert calls == [] and carry == {}
    handle.remove()
    fresh, _ = steps.g_step(G=G, D=D, z_BZ=z_BZ, kimg=0.0)
    torch.testing.assert_close(g_loss, fresh)
    g_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_scalar_names():
    G, D = tiny_nets()
    _, scalars = make_steps().d_step(G=G, D=D, real_BCHW=torch.zeros(4, 3, 16, 16), z_BZ=torch.randn(4, 16), kimg=0)
    assert set(scalars) == {"loss/d", "loss/d_real", "loss/d_fake", "D(x)", "D(G(z))", "acc/d_real", "acc/d_fake"}


def test_same_generator_seed_gives_identical_losses():
    def run(seed: int, *, scramble: int) -> list[torch.Tensor]:
        G, D = tiny_nets(seed=0)
        steps = make_steps(label_smoothing=0.1, label_flip=0.2, d_noise_power=0.1)
        gen = torch.Generator().manual_seed(seed)
        real_BCHW = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
        z_BZ = torch.randn(8, 16, generator=gen)
        torch.manual_seed(scramble)  # the global RNG must not matter: a different state per run
        d_loss, d_scalars = steps.d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=0.0, generator=gen)
        g_loss, _ = steps.g_step(G=G, D=D, z_BZ=z_BZ, kimg=0.0, generator=gen)
        return [d_loss.detach(), g_loss.detach(), *d_scalars.values()]

    a, b = run(7, scramble=0), run(7, scramble=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    c = run(8, scramble=0)
    assert not torch.equal(a[0], c[0])


# --- a tiny training run

@pytest.fixture
def one_thread():
    # Nets this small spend more time syncing two threads than computing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_training_moves_g_towards_the_data_colour(one_thread):
    G, D = tiny_nets(seed=0)
    steps = make_steps(label_smoothing=0.1)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(1)
    colour_C = torch.tensor([0.6, -0.5, 0.2])
    probe_z_BZ = torch.randn(256, 16, generator=torch.Generator().manual_seed(2))

    def colour_error() -> float:
        with torch.no_grad():
            return (G(probe_z_BZ).mean(dim=(0, 2, 3)) - colour_C).abs().max().item()

    before = colour_error()
    for _ in range(150):
        real_BCHW = (colour_C.view(1, 3, 1, 1) + 0.05 * torch.randn(32, 3, 16, 16, generator=gen)).clamp(-1, 1)
        loss, _ = steps.d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=torch.randn(32, 16, generator=gen),
                               kimg=0.0, generator=gen)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        loss, _ = steps.g_step(G=G, D=D, z_BZ=torch.randn(32, 16, generator=gen), kimg=0.0, generator=gen)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    after = colour_error()
    assert before > 0.5  # the untrained G paints grey
    assert after < 0.15 and after < before / 4, (before, after)
