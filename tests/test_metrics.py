"""Evaluation metrics: closed forms for FID/KID, k-NN precision/recall, MS-SSIM, memorisation, feature nets.

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from facegan.data.imageio import ImageError
from facegan.data.records import DataError
from facegan.metrics import (
    METRICS,
    AttrFeatures,
    InceptionWeightsError,
    MetricOptions,
    attr_extractor,
    collapse_alarm,
    compute_metrics,
    discriminator_accuracy,
    extract_features,
    fid_from_features,
    kid_from_features,
    load_inception,
    load_shard_images,
    memorisation_distances,
    ms_ssim_diversity,
    ms_ssim_settings,
    precision_recall_from_features,
    random_baseline_images,
    read_image_folder,
    shard_features,
)


class TinyClassifier(nn.Module):
    """Stand-in for the attribute classifier: forward -> 40 logits, features -> penultimate 16-d.

    Batch norm and dropout make it a real test of eval mode: left in training mode, a sample's
    features would depend on its batch and change from call to call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, 40)

    def features(self, img_BCHW: Tensor) -> Tensor:
        return self.body(img_BCHW)

    def forward(self, img_BCHW: Tensor) -> Tensor:
        return self.head(self.features(img_BCHW))


def tiny_attr() -> AttrFeatures:
    torch.manual_seed(0)
    clf = TinyClassifier()
    clf.train()   # as a caller might hand it over; the extractor must switch it to eval
    return AttrFeatures(classifier=clf)


@pytest.fixture
def one_thread():
    # On the shared 2-core machine, two OpenMP threads contending with other jobs make
    # Inception's many small convs ~40x slower than one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_with_exact_moments(*, n: int, mean: Tensor, var: Tensor, seed: int) -> Tensor:
    """n samples whose sample mean and (unbiased) sample covariance are exactly `mean` and diag(var)."""
    x = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(torch.cov(x.T))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T   # sample covariance exactly I
    return white * var.sqrt() + mean


# -- FID ---------------------------------------------------------------------------------------

def test_fid_of_a_feature_set_against_itself_is_zero() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(real_NF=x, fake_NF=x) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("same_cov", [True, False])
def test_fid_matches_closed_form_for_gaussians(same_cov: bool) -> None:
    dim = 12
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(dim, generator=gen, dtype=torch.float64)
    var_a = torch.rand(dim, generator=gen, dtype=torch.float64) + 0.5
    var_b = var_a if same_cov else torch.rand(dim, generator=gen, dtype=torch.float64) * 3 + 0.1
    a = gaussian_with_exact_moments(n=400, mean=torch.zeros(dim, dtype=torch.float64), var=var_a, seed=2)
    b = gaussian_with_exact_moments(n=500, mean=mu, var=var_b, seed=3)
    # Diagonal covariances: Tr(A + B - 2 (AB)^1/2) = sum (sqrt(a) - sqrt(b))^2; zero when A = B.
    expected = float(mu.square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum())
    assert fid_from_features(real_NF=a, fake_NF=b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(real_NF=a.float(), fake_NF=b.float()) == pytest.approx(expected, rel=1e-4)


# -- KID ---------------------------------------------------------------------------------------

def unbiased_poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Direct unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def test_kid_matches_a_direct_unbiased_mmd() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    y = rng.normal(size=(20, 5)) + 0.7
    # One subset of all rows: the estimate does not depend on the order they were drawn in.
    mean, std = kid_from_features(real_NF=torch.from_numpy(x), fake_NF=torch.from_numpy(y), subsets=1, subset_size=20)
    assert mean == pytest.approx(unbiased_poly_mmd2(x, y), rel=1e-9)
    assert std == 0.0


def test_kid_is_unbiased_for_samples_of_one_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    values, biased = [], []
    for _ in range(300):
        x, y = torch.randn(2, 12, 4, generator=gen, dtype=torch.float64)
        values.append(kid_from_features(real_NF=x, fake_NF=y, subsets=1, subset_size=12)[0])
        kxx, kyy, kxy = ((a @ b.T / 4 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    values_t, biased_t = torch.tensor(values), torch.tensor(biased)
    sem = float(values_t.std() / len(values) ** 0.5)
    assert abs(float(values_t.mean())) < 3 * sem
    # The check has power: the biased (diagonal-included) estimator fails it by a wide margin.
    assert float(biased_t.mean()) > 10 * sem


def test_kid_subsets_are_seeded_and_sizes_checked() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=gen), torch.randn(50, 6, generator=gen) + 0.3
    a = kid_from_features(real_NF=x, fake_NF=y, subsets=5, subset_size=20, seed=1)
    assert a == kid_from_features(real_NF=x, fake_NF=y, subsets=5, subset_size=20, seed=1)
    assert a != kid_from_features(real_NF=x, fake_NF=y, subsets=5, subset_size=20, seed=2)
    with pytest.raises(ValueError, match="subset_size"):
        kid_from_features(real_NF=x, fake_NF=y, subsets=5, subset_size=51)


# -- precision / recall --------------------------------------------------------------------------

def test_precision_recall_identical_far_and_half_covered() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=gen)
    assert precision_recall_from_features(real_NF=real, fake_NF=real.clone()) == (1.0, 1.0)
    assert precision_recall_from_features(real_NF=real, fake_NF=real + 100.0) == (0.0, 0.0)
    # Half the fakes sit on the real data, half far away: precision 1/2, while the fakes' own
    # manifold still covers every real point.
    fake = torch.cat([real[:100], real[100:] + 100.0])
    p, r = precision_recall_from_features(real_NF=real, fake_NF=fake, chunk_size=7)
    assert p == pytest.approx(0.5)
    assert r > 0.4
    assert (p, r) == precision_recall_from_features(real_NF=real, fake_NF=fake, chunk_size=4096)


def test_precision_uses_the_kth_neighbour_radius_excluding_self() -> None:
    # 1-D reals 0..3 with k=3: radii 3, 2, 2, 3, so the real manifold is [-3, 6]. Counting a
    # point as its own neighbour would shrink the radii to 2, 1, 1, 2 and the manifold to [-2, 5].
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[5.5], [6.5], [7.0], [100.0]])
    p, r = precision_recall_from_features(real_NF=real, fake_NF=fake, k=3)
    assert p == 0.25
    assert r == 1.0   # the fakes' radii reach ~93 (from 100 down to the others), covering every real


def test_precision_recall_matches_a_brute_force_reference() -> None:
    # Fixed features, overlapping clouds of different spread: every distance computed at once and
    # the k-th other neighbour taken by sorting (the definition), against the blocked library path.
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(150, 6, generator=gen, dtype=torch.float64)
    fake = 0.5 * torch.randn(120, 6, generator=gen, dtype=torch.float64) + 1.5

    def radii(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.cdist(x, x).sort(dim=1).values[:, k]   # column 0 is the row itself

    for k in (1, 3, 5):
        want_p = (torch.cdist(fake, real) <= radii(real, k)[None]).any(dim=1).double().mean().item()
        want_r = (torch.cdist(real, fake) <= radii(fake, k)[None]).any(dim=1).double().mean().item()
        assert 0.0 < want_p < 1.0 and 0.0 < want_r < 1.0   # not a trivially saturated case
        p, r = precision_recall_from_features(real_NF=real.float(), fake_NF=fake.float(), k=k, chunk_size=16)
        assert (p, r) == pytest.approx((want_p, want_r), abs=1e-6)


# -- MS-SSIM diversity ---------------------------------------------------------------------------

def test_ms_ssim_settings_fit_small_images() -> None:
    k256, sigma256, betas256 = ms_ssim_settings(height=256, width=256)
    assert (k256, sigma256, len(betas256)) == (11, 1.5, 5)
    k64, _, betas64 = ms_ssim_settings(height=64, width=64)
    assert (k64, len(betas64)) == (11, 3) and sum(betas64) == pytest.approx(1.0)
    assert len(ms_ssim_settings(height=16, width=16)[2]) == 1
    assert ms_ssim_settings(height=8, width=8)[0] == 7


@pytest.mark.parametrize("size", [64, 32, 8])
def test_ms_ssim_identical_images_score_one_and_alarm_noise_does_not(size: int) -> None:
    one = random_baseline_images(num_images=1, height=size, width=size, seed=0)
    same = ms_ssim_diversity(fake_images=one.repeat(4, 1, 1, 1), num_pairs=8)
    assert same["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert same["ms_ssim_alarm"] == 1.0
    noise = torch.rand(20, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    diverse = ms_ssim_diversity(fake_images=noise, real_images=noise, num_pairs=20)
    assert diverse["ms_ssim"] < 0.2
    assert diverse["ms_ssim_alarm"] == 0.0


def test_collapse_alarm_compares_with_real_data() -> None:
    assert collapse_alarm(ms_ssim=0.95, threshold=0.9)
    assert not collapse_alarm(ms_ssim=0.4, threshold=0.9)
    assert collapse_alarm(ms_ssim=0.4, real_ms_ssim=0.2, threshold=0.9, margin=0.1)
    assert not collapse_alarm(ms_ssim=0.25, real_ms_ssim=0.2, threshold=0.9, margin=0.1)


# -- memorisation -------------------------------------------------------------------------------

def test_memorisation_ratio_flags_copies_of_training_images() -> None:
    gen = torch.Generator().manual_seed(0)
    train, heldout = torch.randn(300, 16, generator=gen), torch.randn(100, 16, generator=gen)
    copies = train[:100] + 0.01 * torch.randn(100, 16, generator=gen)
    assert memorisation_distances(train_NF=train, heldout_NF=heldout, fake_NF=copies)["ratio"] < 0.1
    fresh = memorisation_distances(train_NF=train, heldout_NF=heldout, fake_NF=torch.randn(100, 16, generator=gen))
    assert 0.8 < fresh["ratio"] < 1.25


# -- feature networks -----------------------------------------------------------------------------

def test_attr_features_are_deterministic_and_batch_independent() -> None:
    attr = tiny_attr()
    imgs = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = extract_features(attr, imgs, batch_size=3)
    assert a.shape == (10, 16) and a.dtype == torch.float32 and not a.requires_grad
    assert torch.equal(a, extract_features(attr, imgs, batch_size=3))
    torch.testing.assert_close(a, extract_features(attr, imgs, batch_size=10))
    # uint8 [0, 255] and float [-1, 1] are the same images to the extractor.
    torch.testing.assert_close(a, extract_features(attr, imgs.float() / 127.5 - 1, batch_size=3))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        attr(imgs.float())


def test_attr_extractor_loads_the_classifier_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = []

    def load_classifier(path):
        loaded.append(path)
        return TinyClassifier()

    import facegan.families.classifier.scoring as scoring

    monkeypatch.setattr(scoring, "load_classifier", load_classifier)
    ext = attr_extractor(checkpoint="ckpt/classifier")
    assert loaded == ["ckpt/classifier"] and ext.name == "attr"
    with pytest.raises(TypeError, match="features"):
        attr_extractor(classifier=nn.Linear(3, 3))


def test_missing_inception_weights_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(InceptionWeightsError,
                       match=f"inception weights file not found: {path} \\(pass --inception-weights with"):
        load_inception(path)


def test_wrong_inception_weights_files_say_what_was_expected(tmp_path: Path) -> None:
    not_inception = tmp_path / "resnet.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict(), not_inception)
    with pytest.raises(InceptionWeightsError, match=f"{not_inception}: not an Inception-v3.*missing, e.g. Conv2d_1a_3x3"):
        load_inception(not_inception)
    truncated = tmp_path / "partial.pth"
    import torchvision

    state = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, truncated)
    with pytest.raises(InceptionWeightsError, match=f"{truncated}: not a valid torchvision.*keys missing, e.g. Mixed_7c"):
        load_inception(truncated)
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(InceptionWeightsError, match=f"{garbage}: cannot be read as a PyTorch state_dict"):
        load_inception(garbage)


def test_torchvision_inception_state_dict_gives_2048_features(tmp_path: Path, one_thread: None) -> None:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "inception_v3.pth"
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    net = load_inception(path)
    assert net.name == "inception"
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = extract_features(net, imgs)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert torch.equal(feats, extract_features(net, imgs))


def test_fid_inception_weights_load_without_any_download(tmp_path: Path, one_thread: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    # Same names and shapes as pt_inception-2015-12-05: torchvision's layout, 1008 classes, no aux head.
    path = tmp_path / "pt_inception-random.pth"
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                               init_weights=False).state_dict(), path)
    net = load_inception(path)
    assert type(net).__name__ == "FidInceptionFeatures"
    feats = extract_features(net, random_baseline_images(num_images=2, height=32, width=32, seed=0))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


# -- data in --------------------------------------------------------------------------------------

def test_shard_features_count_and_match_loaded_images(synthetic_shards: Path) -> None:
    attr = tiny_attr()
    feats = shard_features(attr, shards_dir=synthetic_shards, split="train", max_images=50, batch_size=16)
    imgs = load_shard_images(shards_dir=synthetic_shards, split="train", max_images=50)
    assert feats.shape == (50, 16) and imgs.shape == (50, 3, 32, 32) and imgs.dtype == torch.uint8
    torch.testing.assert_close(feats, extract_features(attr, imgs))


def test_read_image_folder_resizes_and_counts_unreadable_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(tmp_path / "b.JPG")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    got = read_image_folder(tmp_path, height=32, width=32)
    assert got.images.shape == (2, 3, 32, 32) and got.images.dtype == torch.uint8
    assert [Path(p).name for p in got.paths] == ["a.png", "b.JPG"]
    assert [Path(p).name for p, _ in got.skipped] == ["broken.jpg"]
    with pytest.raises(ImageError, match="broken.jpg"):
        read_image_folder(tmp_path, height=32, width=32, strict=True)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"none of 1 image files.*x\.png"):
        read_image_folder(only_bad, height=32, width=32)


# -- registry, baseline, discriminator --------------------------------------------------------------

def test_compute_metrics_names_results_after_the_feature_network() -> None:
    gen = torch.Generator().manual_seed(0)
    train, val, fake = (torch.randn(40, 8, generator=gen) for _ in range(3))
    opts = MetricOptions(kid_subsets=3, kid_subset_size=20, ms_ssim_pairs=10)
    attr = compute_metrics(feature_name="attr", real_train_feats=train, real_eval_feats=val, fake_feats=fake,
                           options=opts)
    assert set(attr) == {"fid_attr", "kid_attr", "kid_std_attr", "precision_attr", "recall_attr",
                         "memorisation_fake_nn_median_attr", "memorisation_heldout_nn_median_attr",
                         "memorisation_ratio_attr"}
    plain = compute_metrics(feature_name="inception", names=["fid", "kid"], real_eval_feats=val, fake_feats=fake,
                            options=opts)
    assert set(plain) == {"fid", "kid", "kid_std"} and plain["fid"] == attr["fid_attr"]
    with pytest.raises(ValueError, match="'memorisation' needs real_train_feats"):
        compute_metrics(feature_name="attr", names=["memorisation"], real_eval_feats=val, fake_feats=fake)
    with pytest.raises(ValueError, match="feature_name"):
        compute_metrics(real_eval_feats=val, fake_feats=fake)
    assert set(METRICS) >= {"fid", "kid", "precision_recall", "ms_ssim", "memorisation", "d_accuracy"}


def test_random_baseline_is_seeded_and_scores_worse_than_held_out_faces(synthetic_shards: Path) -> None:
    base = random_baseline_images(num_images=64, height=32, width=32, seed=5)
    assert base.shape == (64, 3, 32, 32) and -1.0 <= float(base.min()) and float(base.max()) <= 1.0
    assert torch.equal(base, random_baseline_images(num_images=64, height=32, width=32, seed=5))
    attr = tiny_attr()
    # Three disjoint thirds of the training faces: training set, held-out set, and "fakes" that are
    # real faces, which the random baseline is scored against on equal terms (same count).
    faces = load_shard_images(shards_dir=synthetic_shards, split="train")
    third = faces.shape[0] // 3
    train, heldout, good = faces[:third], faces[third:2 * third], faces[2 * third:3 * third]
    opts = MetricOptions(kid_subsets=5, kid_subset_size=16, ms_ssim_pairs=20)
    scores = {}
    for name, fake in (("faces", good), ("baseline", base[:third])):
        scores[name] = compute_metrics(feature_name="attr", real_train_feats=extract_features(attr, train),
                                       real_eval_feats=extract_features(attr, heldout), fake_images=fake,
                                       real_images=heldout, fake_feats=extract_features(attr, fake), options=opts)
    assert all(np.isfinite(v) for s in scores.values() for v in s.values())
    assert scores["baseline"]["fid_attr"] > 2 * scores["faces"]["fid_attr"]


class MeanBrightnessD(nn.Module):
    """Stand-in discriminator: logit = mean pixel value (bright = "real")."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, img_BCHW: Tensor) -> Tensor:
        return self.scale * img_BCHW.mean(dim=(1, 2, 3))


def test_discriminator_accuracy_on_real_and_fake() -> None:
    d = MeanBrightnessD().train()
    bright, dark = torch.full((5, 3, 8, 8), 0.5), torch.full((7, 3, 8, 8), -0.5)
    assert discriminator_accuracy(disc=d, real_images=bright, fake_images=dark) == {"d_acc_real": 1.0,
                                                                                   "d_acc_fake": 1.0}
    assert discriminator_accuracy(disc=d, real_images=dark, fake_images=bright) == {"d_acc_real": 0.0,
                                                                                   "d_acc_fake": 0.0}
    assert d.training
    mixed = torch.cat([bright[:3], dark[:1]])
    assert compute_metrics(names=["d_accuracy"], disc=d, real_images=mixed, fake_images=dark)["d_acc_real"] == 0.75


def test_config_metric_names_are_the_registered_metrics() -> None:
    """config.py names the metrics without importing torch; the registry is the truth."""
    from facegan.config import METRIC_NAMES
    from facegan.metrics import METRICS

    assert set(METRIC_NAMES) == set(METRICS)
