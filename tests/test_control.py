"""Attribute-controlled faces: the report's overlay noise against a hand computation, the overlay
and conditional families' nets and phases, control accuracy on a toy with a known answer, and the
blend/generate CLIs on tiny checkpoints.

    .venv/bin/python -m pytest tests/test_control.py -q
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facegan.cli.control import register as add_control_parsers
from facegan.checkpoint import save_checkpoint
from facegan.config import ConfigError, from_dict, to_dict
from facegan.control import (control_accuracy, flip_requests, load_control_generator as load_generator, load_photos,
                             parse_attrs, photo_crop, request_rows, with_weights)
from facegan.data.records import CELEBA_ATTRS, DataError
from facegan.data.synthetic import SYNTHETIC_DRAWN
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo
from facegan.families.classifier.nets import ReportCNN
from facegan.families.classifier.scoring import attribute_probs
from facegan.families.conditional.nets import ConditionalGenerator, ProjectionDiscriminator
from facegan.families.conditional.steps import ConditionalSteps
from facegan.families.overlay import OverlayOptions
from facegan.families.overlay.noise import overlay_noise

ATTRS = list(CELEBA_ATTRS)
A = len(ATTRS)
DATA = DataInfo(attr_names=tuple(ATTRS))


def family_cfg(family: str, *, gan: dict | None = None, **model) -> RunConfig:
    return from_dict(RunConfig, {"data": {"shards": "unused"}, "model": {"family": family, **model}, "gan": gan or {}})


def build(family: str, *, num_attrs: int = A, gan: dict | None = None, **model) -> dict[str, nn.Module]:
    """A family's nets for a model section (initialised as the loop would)."""
    gan = gan if gan is not None else ({"attr_source": "labels"} if family == "overlay" else {})
    return FAMILIES[family].build_nets(family_cfg(family, gan=gan, **model),
                                       DataInfo(attr_names=tuple(ATTRS[:num_attrs])))


def steps_for(family: str, **gan):
    return FAMILIES[family].build_steps(family_cfg(family, gan=gan), DATA)


# --- the overlay noise

def test_overlay_noise_matches_hand_computation():
    # A = 2 attributes, so 4 blocks of 2; alpha 0.6, beta 0.8.
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    o = torch.tensor([[0.5, 1.0], [1.0, 0.0]])
    want = torch.tensor([
        # block 1: .6r + .4o     block 2: .6r - .4o     block 3: .8r + .2o     block 4: .8r - .2o
        [0.6 + 0.2, 1.2 + 0.4, 1.8 - 0.2, 2.4 - 0.4, 4.0 + 0.1, 4.8 + 0.2, 5.6 - 0.1, 6.4 - 0.2],
        [0.4, 0.0, -0.4, 0.0, 0.2, 0.0, -0.2, 0.0],
    ])
    torch.testing.assert_close(overlay_noise(r, o, alpha=0.6, beta=0.8), want)
    # One attribute row serves a whole batch; alpha = beta = 1 is pure noise, 0 pure attributes.
    torch.testing.assert_close(overlay_noise(r, o[0], alpha=0.6, beta=0.8)[0], want[0])
    torch.testing.assert_close(overlay_noise(r, o, alpha=1.0, beta=1.0), r)
    torch.testing.assert_close(overlay_noise(r, o, alpha=0.0, beta=0.0)[1], torch.tensor([1.0, 0, -1, 0, 1, 0, -1, 0]))


def test_overlay_noise_at_160_follows_the_report_formula_per_coordinate():
    gen = torch.Generator().manual_seed(0)
    r, o = torch.randn(3, 160, generator=gen), torch.rand(3, 40, generator=gen)
    alpha, beta = 0.3, 0.9
    z = overlay_noise(r, o, alpha=alpha, beta=beta)
    for i in range(160):
        w = alpha if i < 80 else beta
        sign = 1.0 if (i // 40) % 2 == 0 else -1.0
        torch.testing.assert_close(z[:, i], w * r[:, i] + sign * (1 - w) * o[:, i % 40])


@pytest.mark.parametrize("name, value", [("alpha", -0.1), ("alpha", 1.01), ("beta", float("nan")),
                                         ("beta", 2), ("alpha", True)])
def test_alpha_beta_out_of_range_are_config_errors(name, value):
    kw = {"alpha": 0.6, "beta": 0.8, name: value}
    with pytest.raises(ConfigError, match=rf"{name} must be a number in \[0, 1\]"):
        overlay_noise(torch.zeros(1, 8), torch.zeros(1, 2), **kw)
    with pytest.raises(ConfigError, match=name):
        OverlayOptions(attr_source="labels", **kw)


def test_overlay_noise_shape_errors_and_options_validation():
    with pytest.raises(ValueError, match=r"r \(2, 7\) and o \(2, 2\)"):
        overlay_noise(torch.zeros(2, 7), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="classifier: required when attr_source is 'classifier'"):
        OverlayOptions()
    with pytest.raises(ConfigError, match="attr_source must be one of"):
        OverlayOptions(attr_source="guess")
    with pytest.raises(ConfigError, match="label_flip"):
        OverlayOptions(attr_source="labels", label_flip=0.7)
    with pytest.raises(ConfigError, match="model.z_dim: the overlay family needs 4 x the number of attributes"):
        build("overlay", resolution=16, z_dim=100, gan={"attr_source": "labels"})


# --- tiny nets and a tiny classifier checkpoint

def tiny_nets(family: str, *, resolution=16, z_dim: int = 160, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    nets = build(family, resolution=resolution, z_dim=z_dim, base_channels=8)
    return nets["G"], nets["D"]


def save_tiny_classifier(path: Path, *, seed: int = 0) -> Path:
    """A report-CNN classifier checkpoint at 32 px (untrained), in `facegan classifier train`'s layout."""
    torch.manual_seed(seed)
    net = ReportCNN(num_attrs=A, resolution=32, dense_units=8)
    cfg = to_dict(family_cfg("classifier", arch="report_cnn", resolution=32, dense_units=8))
    pos = [40 if a in SYNTHETIC_DRAWN else (100 if a in ("No_Beard", "Young") else 0) for a in ATTRS]
    meta = {"family": "classifier", "kind": "classifier", "model": cfg["model"], "config": cfg, "attr_names": ATTRS,
            "scored_attrs": list(SYNTHETIC_DRAWN), "train_positives": pos, "train_count": 100, "kimg": 0.0}
    return save_checkpoint(path, state={"C": net.state_dict()}, meta=meta)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("clf") / "ckpt-000000000")


def test_classifier_outputs_are_probabilities_with_unscored_attrs_at_their_rate(classifier_ckpt: Path):
    from facegan.families.classifier.scoring import load_classifier

    clf = load_classifier(classifier_ckpt)
    img = torch.rand(5, 3, 16, 16) * 2 - 1          # resized to the classifier's 32 px
    o = attribute_probs(clf, img)
    scored = [ATTRS.index(a) for a in SYNTHETIC_DRAWN]
    assert o.shape == (5, A) and o.dtype == torch.float32 and ((o[:, scored] > 0) & (o[:, scored] < 1)).all()
    j_young, j_bald, j_smile = ATTRS.index("Young"), ATTRS.index("Bald"), ATTRS.index("Smiling")
    assert (o[:, j_young] == 1.0).all() and (o[:, j_bald] == 0.0).all()     # never trained: their train rate
    torch.testing.assert_close(o[:, j_smile], torch.sigmoid(clf(nn.functional.interpolate(
        img, size=(32, 32), mode="bilinear", antialias=True)))[:, j_smile])


# --- overlay phases

def test_overlay_phases_grads_reach_g_through_the_noise_not_the_classifier(classifier_ckpt: Path):
    G, D = tiny_nets("overlay")
    steps = steps_for("overlay", alpha=0.6, beta=0.8, classifier=str(classifier_ckpt), label_flip=0.05)
    assert FAMILIES["overlay"].takes_attrs and steps._classifier is None   # loaded lazily ...
    steps.to("cpu")                                                 # ... by to(device), frozen
    clf = steps.classifier
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    z = torch.randn(8, 160)
    carry: dict[str, torch.Tensor] = {}
    loss_d, sc = steps.d_step(G=G, D=D, real_BCHW=real, z_BZ=z, kimg=0.0, attrs_BA=torch.zeros(8, A), carry=carry)
    # o is the classifier's reading of the reals, not the (all-zero) labels.
    torch.testing.assert_close(carry["o_BA"], attribute_probs(clf, real))
    loss_d.backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None for p in D.parameters())
    D.zero_grad(set_to_none=True)
    loss_g, _ = steps.g_step(G=G, D=D, z_BZ=z, kimg=0.0, attrs_BA=torch.zeros(8, A), carry=carry)
    assert carry == {}
    loss_g.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert all(p.grad is None for p in clf.parameters())

    # Gradients reach r and o through the overlay exactly as the formula says.
    r = torch.randn(2, 160, requires_grad=True)
    o = torch.rand(2, A, requires_grad=True)
    overlay_noise(r, o, alpha=0.6, beta=0.8).sum().backward()
    torch.testing.assert_close(r.grad, torch.tensor([0.6] * 80 + [0.8] * 80).expand(2, -1))
    torch.testing.assert_close(o.grad, torch.full((2, A), 0.4 - 0.4 + 0.2 - 0.2))


def test_overlay_with_labels_and_generate_depend_on_the_attributes():
    G, D = tiny_nets("overlay")
    G.eval()
    steps = steps_for("overlay", attr_source="labels")
    steps.to("cpu")                                                 # no classifier to load
    z = torch.randn(4, 160)
    ones, zeros = torch.ones(4, A), torch.zeros(4, A)
    assert not torch.allclose(steps.generate(G, z, ones), steps.generate(G, z, zeros))
    torch.testing.assert_close(steps.generate(G, z, ones), G(overlay_noise(z, ones, alpha=0.6, beta=0.8)))
    # Without carry, g_step rebuilds the same overlay from the labels.
    _, sc = steps.g_step(G=G, D=D, z_BZ=z, kimg=0.0, attrs_BA=ones)
    _, sc2 = steps.g_step(G=G, D=D, z_BZ=z, kimg=0.0, attrs_BA=ones)
    torch.testing.assert_close(sc["loss/g"], sc2["loss/g"])
    with pytest.raises(ValueError, match="attrs_BA"):
        steps.d_step(G=G, D=D, real_BCHW=torch.zeros(4, 3, 16, 16), z_BZ=z, kimg=0.0)


# --- conditional nets and phases

def test_projection_d_and_conditional_g_use_the_attributes():
    G, D = tiny_nets("conditional", z_dim=16)
    G.eval(), D.eval()
    z, img = torch.randn(4, 16), torch.rand(4, 3, 16, 16) * 2 - 1
    a, b = torch.zeros(4, A), torch.zeros(4, A)
    b[:, ATTRS.index("Eyeglasses")] = 1
    assert not torch.allclose(D(img, a), D(img, b))
    assert not torch.allclose(G(z, a), G(z, b))
    # The projection term is exactly <V^T (2a - 1), sum_hw phi(x)>.
    phi = D.trunk(img).sum(dim=(2, 3))
    diff = (D.embed.weight @ (2 * (b - a)).T).T
    torch.testing.assert_close(D(img, b) - D(img, a), (diff * phi).sum(1))
    with pytest.raises(ValueError, match=r"attrs of shape \(4, 40\)"):
        D(img)
    with pytest.raises(ValueError, match=r"attrs of shape \(4, 40\)"):
        G(z, torch.zeros(4, 3))


def test_conditional_phases_grads_and_carry():
    G, D = tiny_nets("conditional", z_dim=16)
    steps = steps_for("conditional", label_smoothing=0.1, label_flip=0.05)
    assert isinstance(steps, ConditionalSteps) and FAMILIES["conditional"].takes_attrs
    attrs = (torch.rand(8, A) > 0.5).float()
    real, z = torch.rand(8, 3, 16, 16) * 2 - 1, torch.randn(8, 16)
    carry: dict[str, torch.Tensor] = {}
    loss_d, _ = steps.d_step(G=G, D=D, real_BCHW=real, z_BZ=z, kimg=0.0, attrs_BA=attrs, carry=carry)
    loss_d.backward()
    assert all(p.grad is None for p in G.parameters())
    assert D.embed.weight.grad is not None and D.embed.weight.grad.abs().sum() > 0
    D.zero_grad(set_to_none=True)
    loss_g, _ = steps.g_step(G=G, D=D, z_BZ=z, kimg=0.0, attrs_BA=attrs, carry=carry)
    loss_g.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_native_aspect_nets_and_dcgan_equivalence_at_square_sizes():
    G = ConditionalGenerator(resolution=(218, 178), z_dim=8, num_attrs=3, base_channels=4)
    D = ProjectionDiscriminator(resolution=(218, 178), num_attrs=3, base_channels=4)
    a = torch.rand(2, 3)
    img = G(torch.randn(2, 8), a)
    assert img.shape == (2, 3, 218, 178) and img.abs().max() <= 1
    assert D(img, a).shape == (2,)
    nets = build("overlay", resolution=[218, 178], z_dim=160, base_channels=4, gan={"attr_source": "labels"})
    assert nets["G"](torch.randn(2, 160)).shape == (2, 3, 218, 178)
    # At square powers of two with no attributes they are DCGAN's nets (same parameter counts).
    dc = build("dcgan", resolution=32, base_channels=8)
    cg = ConditionalGenerator(resolution=32, num_attrs=0, base_channels=8)
    cd = ProjectionDiscriminator(resolution=32, num_attrs=0, base_channels=8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(cg), count(cd)) == (count(dc["G"]), count(dc["D"]))


# --- control accuracy on a toy with a known answer

class PaintingG:
    """Paints attribute j of a request as pixel column j (+1 / -1), wrong on rows < errors[j]."""

    def __init__(self, errors: list[int]):
        self.errors = errors
        self.offset = 0

    def __call__(self, rows_BA: torch.Tensor) -> torch.Tensor:
        b, a = rows_BA.shape
        bits = rows_BA.clone()
        idx = torch.arange(self.offset, self.offset + b)
        for j, e in enumerate(self.errors):
            bits[idx < e, j] = 1 - bits[idx < e, j]
        self.offset += b
        img = torch.zeros(b, 3, 4, a)
        img[:, :, :, :] = (2 * bits - 1)[:, None, None, :]
        return img


class ReadingClassifier(nn.Module):
    """Reads the painted columns back as logits."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return 10 * img[:, 0, 0, :]


def test_control_accuracy_on_a_painted_toy():
    names = ["A0", "A1", "A2", "A3"]
    n = 20
    req = torch.zeros(n, 4)
    req[:10, 1] = 1                       # A1 requested for half the faces
    req[::4, 2] = 1                       # A2 for a quarter
    req[:, 3] = 1                         # A3 always
    errors = [0, 2, 5, 20]
    clf = ReadingClassifier()
    clf.scored_attrs = ["A0", "A1", "A2"]             # A3 is not counted in the mean
    result = control_accuracy(PaintingG(errors), clf, req, attr_names=names, batch_size=6,
                              unconditioned=lambda rows: -torch.ones(len(rows), 3, 4, 4))
    want = [1.0, 0.9, 0.75]
    assert list(result["per_attr"]) == ["A0", "A1", "A2"]
    for name, w in zip(names, want):
        assert result["per_attr"][name]["controlled"] == pytest.approx(w)
    # The unconditioned G paints "absent" everywhere: right exactly where absence was requested.
    unc = [1.0, 0.5, 0.75]
    for name, u in zip(names, unc):
        assert result["per_attr"][name]["unconditioned"] == pytest.approx(u)
        assert result["per_attr"][name]["requested_rate"] == pytest.approx(float(req[:, names.index(name)].mean()))
    assert result["mean_controlled"] == pytest.approx(np.mean(want))
    assert result["mean_unconditioned"] == pytest.approx(np.mean(unc))
    assert result["mean_lift"] == pytest.approx(np.mean(want) - np.mean(unc))
    assert result["all_match_controlled"] == pytest.approx(15 / 20)   # rows 0-4 have an A2 error (0-1 also A1)

    # The default baseline scores the same faces against shuffled requests: a perfect painter on
    # identical requests keeps its score, and on varied requests it drops to chance.
    same = torch.ones(n, 4)
    r = control_accuracy(PaintingG([0, 0, 0, 0]), clf, same, attr_names=names)
    assert r["mean_controlled"] == r["mean_unconditioned"] == 1.0
    big = (torch.rand(400, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    r = control_accuracy(PaintingG([0, 0, 0, 0]), clf, big, attr_names=names, batch_size=400)
    assert r["mean_controlled"] == 1.0 and abs(r["mean_unconditioned"] - 0.5) < 0.08

    # Flip requests count only the flipped entry.
    req_f, mask = flip_requests(torch.zeros(6, 4), [0, 2])
    assert req_f.sum() == 6 and mask.sum() == 6 and mask[:, 0].sum() == 3 and mask[:, 2].sum() == 3
    r = control_accuracy(PaintingG([0, 0, 2, 0]), clf, req_f, attr_names=names, mask_NA=mask,
                         unconditioned=lambda rows: -torch.ones(len(rows), 3, 4, 4))
    assert list(r["per_attr"]) == ["A0", "A2"]
    assert r["per_attr"]["A0"]["controlled"] == 1.0 and r["per_attr"]["A2"]["controlled"] == pytest.approx(2 / 3)
    assert r["mean_unconditioned"] == 0.0                            # every counted request was a 1
    with pytest.raises(ValueError, match="0/1"):
        control_accuracy(PaintingG([0] * 4), clf, torch.full((2, 4), 0.5), attr_names=names)


# --- requests

def test_parse_attrs_and_request_rows():
    assert parse_attrs("Eyeglasses=1, Smiling=1,Male=0", ATTRS) == {"Eyeglasses": 1, "Smiling": 1, "Male": 0}
    assert parse_attrs("", ATTRS) == {}
    with pytest.raises(ConfigError, match=r"unknown attributes Glasses, smiling \(valid: 5_o_Clock_Shadow, "
                                          r"Arched_Eyebrows.*Young\)"):
        parse_attrs("Glasses=1,smiling=1,Male=0", ATTRS)
    with pytest.raises(ConfigError, match="Male must be 0 or 1, got '-1'"):
        parse_attrs("Male=-1", ATTRS)
    with pytest.raises(ConfigError, match="expected NAME=0 or NAME=1"):
        parse_attrs("Male", ATTRS)
    with pytest.raises(ConfigError, match="more than once"):
        parse_attrs("Male=1,Male=0", ATTRS)
    prev = torch.linspace(0, 1, A)
    rows = request_rows({"Eyeglasses": 1, "Male": 0}, attr_names=ATTRS, prevalence_A=prev, n=3)
    want = prev.clone()
    want[ATTRS.index("Eyeglasses")], want[ATTRS.index("Male")] = 1, 0
    torch.testing.assert_close(rows, want.expand(3, -1))


def test_photo_crop_follows_the_recipe():
    assert photo_crop("square", src_w=300, src_h=100, height=64, width=64) == "square"
    assert photo_crop("none", src_w=178, src_h=218, height=218, width=178) == (218, 178)
    assert photo_crop("none", src_w=400, src_h=400, height=218, width=178) == (400, 326)
    assert photo_crop((150, 150), src_w=178, src_h=218, height=64, width=64) == (150, 150)
    assert photo_crop((150, 150), src_w=100, src_h=80, height=64, width=64) == (80, 80)


# --- CLIs on tiny checkpoints

def save_tiny_gan(path: Path, family: str, *, shards: Path, classifier: Path | None, meta_extra: dict) -> Path:
    z_dim = 160 if family == "overlay" else 16
    G, D = tiny_nets(family, resolution=32, z_dim=z_dim, seed=1)
    model = {"family": family, "resolution": 32, "z_dim": z_dim, "base_channels": 8, "g_batchnorm": True,
             "d_batchnorm": True, "d_dropout": 0.0}
    gan = {"label_flip": 0.05}
    if family == "overlay":
        gan.update(alpha=0.6, beta=0.8, attr_source="classifier", classifier=str(classifier))
    config = {"data": {"shards": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 100},
              "model": model, "gan": gan, "optim": {"g_lr": 4e-4, "d_lr": 2e-4}, "train": {"out_dir": str(path.parent)}}
    meta = {"family": family, "model": model, "step": 1, "images_seen": 8, "kimg": 0.008, "world_size": 1,
            "config": config, **meta_extra}
    return save_checkpoint(path, state={"G": G.state_dict(), "G_ema": G.state_dict(), "D": D.state_dict()}, meta=meta)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="facegan")
    add_control_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_photos(folder: Path) -> list[str]:
    from facegan.data.synthetic import render_face

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w, ext) in enumerate([(218, 178, "jpg"), (90, 300, "png"), (40, 40, "jpg")]):
        p = folder / f"face{i}.{ext}"
        Image.fromarray(render_face(seed=5, index=i, height=h, width=w)).save(p)
        paths.append(str(p))
    return paths


def test_blend_and_generate_clis(tmp_path: Path, synthetic_shards: Path, classifier_ckpt: Path,
                                 capsys: pytest.CaptureFixture[str]):
    photos = write_photos(tmp_path / "photos")
    # Overlay: names and rates in the meta. Conditional: both taken from the run's shards.
    prev = [0.25] * A
    overlay = save_tiny_gan(tmp_path / "ov" / "checkpoints" / "ckpt-000000008", "overlay", shards=synthetic_shards,
                            classifier=classifier_ckpt, meta_extra={"attr_names": ATTRS, "attr_prevalence": prev})
    cond = save_tiny_gan(tmp_path / "cond" / "ckpt-000000008", "conditional", shards=synthetic_shards,
                         classifier=None, meta_extra={})

    out = tmp_path / "blend.png"
    assert run_cli(["blend", *photos, "--checkpoint", str(tmp_path / "ov"), "-n", "4", "--out", str(out),
                    "--alpha", "0.5", "--beta", "1"]) == 0
    assert Image.open(out).size == (2 * 34 + 2, 2 * 34 + 2)            # 2x2 grid of 32 px faces, 2 px gaps
    text = capsys.readouterr().out
    assert "alpha 0.5, beta 1" in text and "blending 3 photos" in text

    assert run_cli(["generate", "--checkpoint", str(overlay), "--attrs", "Eyeglasses=1,Smiling=1,Male=0",
                    "-n", "3", "--out", str(tmp_path / "gen.png")]) == 0
    assert "with Eyeglasses=1, Smiling=1, Male=0" in capsys.readouterr().out
    assert run_cli(["generate", "--checkpoint", str(cond), "--attrs", "Eyeglasses=1", "-n", "2",
                    "--out", str(tmp_path / "gen_c.png")]) == 0
    assert run_cli(["blend", photos[0], "--checkpoint", str(cond), "--classifier", str(classifier_ckpt),
                    "-n", "2", "--out", str(tmp_path / "blend_c.png")]) == 0

    # What the CLIs compute: the requested rows reach G; unspecified attributes at the train rate.
    bundle = load_generator(cond)
    from facegan.data.labels import label_counts
    from facegan.data.stream import ShardSet

    pos, n = label_counts(ShardSet.open(str(synthetic_shards)), "train")
    torch.testing.assert_close(bundle.prevalence_A, torch.tensor(pos / n, dtype=torch.float32))
    ov = load_generator(overlay)
    torch.testing.assert_close(ov.prevalence_A, torch.tensor(prev))
    assert ov.crop == "square" and ov.resolution == (32, 32)
    swept = with_weights(ov, alpha=1.0, beta=1.0)
    z = ov.latent(2, seed=0)
    torch.testing.assert_close(swept.generate(z, torch.rand(2, A)), ov.G(z))   # alpha = beta = 1 ignores o

    # Input validation, each naming what is wrong.
    bad = tmp_path / "notaphoto.jpg"
    bad.write_text("hello")
    with pytest.raises(DataError, match=r"cannot read 2 of 3 photos: .*notaphoto\.jpg.*missing\.png"):
        run_cli(["blend", photos[0], str(bad), str(tmp_path / "missing.png"), "--checkpoint", str(overlay),
                 "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match=r"unknown attribute Glasses \(valid: 5_o_Clock_Shadow"):
        run_cli(["generate", "--checkpoint", str(overlay), "--attrs", "Glasses=1", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\], got 1.5"):
        run_cli(["generate", "--checkpoint", str(overlay), "--alpha", "1.5", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match=r"beta must be a number in \[0, 1\], got -0.2"):
        run_cli(["blend", photos[0], "--checkpoint", str(overlay), "--beta", "-0.2", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match="only the overlay family"):
        run_cli(["generate", "--checkpoint", str(cond), "--alpha", "0.5", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match="--classifier"):
        run_cli(["blend", photos[0], "--checkpoint", str(cond), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()

    # Away from its shards, a checkpoint with names and recipe in its meta still blends; generate
    # needs the attribute rates and says where they would come from.
    away = save_tiny_gan(tmp_path / "away" / "ckpt-000000008", "overlay", shards=tmp_path / "gone",
                         classifier=classifier_ckpt,
                         meta_extra={"attr_names": ATTRS, "shard_recipe": {"crop": "square", "resolution": 32}})
    assert run_cli(["blend", photos[1], "--checkpoint", str(away), "-n", "1", "--out", str(tmp_path / "b1.png")]) == 0
    from facegan.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no train-split attribute rates in its meta, and its shard set .*gone"):
        run_cli(["generate", "--checkpoint", str(away), "--out", str(tmp_path / "x.png")])


def test_load_photos_crops_like_the_shards(tmp_path: Path):
    photos = write_photos(tmp_path)
    img = load_photos(photos, crop="square", height=32, width=32)
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    native = load_photos(photos[:2], crop="none", height=218, width=178)
    assert native.shape == (2, 3, 218, 178)
    # A CelebA-shaped photo under crop "none" is only resized (here: not at all).
    exact = torch.from_numpy(np.asarray(Image.open(photos[0]).convert("RGB")).copy()).permute(2, 0, 1).float()
    assert (native[0] - (exact / 127.5 - 1)).abs().mean() < 0.02


# --- configs and loop runs

@pytest.mark.parametrize("name", ["overlay_celeba64.yaml", "conditional_celeba64.yaml", "overlay_demo.yaml"])
def test_configs_load_with_the_report_settings(name: str):
    from facegan.config import load_yaml, read_yaml
    from facegan.families.conditional import ConditionalOptions

    path = Path(__file__).resolve().parents[1] / "configs" / name
    cfg = load_yaml(RunConfig, path)
    data = read_yaml(path)
    assert isinstance(cfg.gan, OverlayOptions if cfg.model.family == "overlay" else ConditionalOptions)
    nets = build(cfg.model.family, resolution=16, z_dim=cfg.model.z_dim, base_channels=2,
                 gan={"attr_source": "labels"} if cfg.model.family == "overlay" else {})  # z fits A = 40
    assert set(nets) == {"G", "D"} and cfg.gan.label_flip == 0.05
    assert data["optim"] == {"g_lr": 4e-4, "d_lr": 2e-4, **({"beta1": 0.5} if "celeba" in name else {})}
    assert data["data"]["batch_size"] == 32 and data["model"]["d_dropout"] == 0.3


def test_native_config_builds_218x178_nets():
    from facegan.config import load_yaml

    cfg = load_yaml(RunConfig, Path(__file__).resolve().parents[1] / "configs" / "overlay_celeba_native.yaml")
    assert cfg.model.size == (218, 178) and isinstance(cfg.gan, OverlayOptions)
    m = cfg.model
    nets = build(m.family, resolution=m.resolution, z_dim=m.z_dim, base_channels=2, d_dropout=m.d_dropout,
                 gan={"attr_source": "labels"})
    img = nets["G"](torch.randn(2, m.z_dim))
    assert img.shape == (2, 3, 218, 178) and nets["D"](img).shape == (2,)


def test_non_square_runs_train_and_generate(tmp_path: Path):
    """A [height, width] run goes through the loop, its checkpoint, `facegan sample` and `generate`;
    square-only families refuse such a size by name."""
    from facegan.cli import main
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards
    from facegan.loop import train

    shards = tmp_path / "shards"
    build_shards(from_dict(ShardRecipe, {"source": "synthetic", "count": 48, "resolution": "40x32",
                                         "shard_size": 16, "workers": 1, "seed": 5}), root=None, out=shards,
                 progress=False)
    cfg = from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
        "model": {"family": "overlay", "resolution": [40, 32], "z_dim": 160, "base_channels": 4},
        "gan": {"attr_source": "labels"},
        "train": {"total_kimg": 0.032, "tick_kimg": 0.016, "checkpoint_kimg": 0.032, "out_dir": str(tmp_path / "run"),
                  "num_threads": 1, "grid_size": 4},
        "wandb": {"enabled": False}})
    metrics = train(cfg)
    assert metrics["step"] == 4
    assert main(["generate", "--checkpoint", str(tmp_path / "run"), "--attrs", "Smiling=1", "-n", "4",
                 "--out", str(tmp_path / "g.png")]) == 0
    ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
    assert main(["sample", "--checkpoint", str(ckpt), "-n", "3", "--out-dir", str(tmp_path / "s")]) == 0
    from PIL import Image

    sizes = {Image.open(p).size for p in (tmp_path / "s").iterdir()}
    assert sizes == {(32, 40)}  # PIL: (width, height)
    with pytest.raises(ConfigError, match="square images only"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "model": {"family": "dcgan", "resolution": [40, 32]}})


@pytest.mark.parametrize("family", ["conditional", "overlay"])
def test_loop_trains_the_family_and_generate_reads_its_checkpoint(family: str, synthetic_shards: Path,
                                                                 tmp_path: Path):
    from facegan.checkpoint import list_checkpoints
    from facegan.loop import train

    out = tmp_path / family
    cfg = from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 8, "num_workers": 0},
        "model": {"family": family, "resolution": 32, "z_dim": 160 if family == "overlay" else 16,
                  "base_channels": 4},
        "gan": {"label_flip": 0.05, **({"attr_source": "labels", "alpha": 0.5} if family == "overlay" else {})},
        "train": {"total_kimg": 0.032, "tick_kimg": 0.016, "checkpoint_kimg": 0.032, "ema_kimg": 0.01,
                  "out_dir": str(out), "num_threads": 1, "grid_size": 4},
        "wandb": {"enabled": False}})
    metrics = train(cfg)
    assert metrics["step"] == 4 and math.isfinite(metrics["loss/g"])
    assert (out / "samples" / "latest.png").is_file()
    ckpt = list_checkpoints(out / "checkpoints")[-1]
    assert run_cli(["generate", "--checkpoint", str(out), "--attrs", "Smiling=1", "-n", "2",
                    "--out", str(tmp_path / "g.png")]) == 0
    bundle = load_generator(ckpt)
    assert bundle.family.name == family and bundle.attr_names == ATTRS
    if family == "overlay":
        assert bundle.steps.options.alpha == 0.5
