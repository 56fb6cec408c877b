"""`facegan compare`: DCGAN, WGAN-GP and VAE runs (tiny, on the synthetic shards) scored the way
`facegan eval` scores them, attribute rates against the val labels, a self-contained page that
headless Chromium renders with every image decoded, JSON and CSV beside it.

    .venv/bin/python -m pytest tests/test_compare.py -q
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import chromium, skip_unless_required
from facegan.config import ConfigError, from_dict
from facegan.families import RunConfig
from facegan.loop import train


def tiny_run(family: str, shards: Path, out: Path, **sections) -> Path:
    data = {"data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
            "model": {"family": family, "resolution": 32, "z_dim": 16, "base_channels": 8},
            "train": {"total_kimg": 0.16, "tick_kimg": 0.16, "checkpoint_kimg": 0.16, "out_dir": str(out),
                      "num_threads": 1, "grid_size": 4},
            "wandb": {"enabled": False}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    train(from_dict(RunConfig, data))
    return out


@pytest.fixture(scope="module")
def runs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    clf = from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "classifier", "arch": "report_cnn", "resolution": 32, "dense_units": 64},
        "train": {"total_kimg": 0.32, "tick_kimg": 0.32, "checkpoint_kimg": 0.32, "out_dir": str(root / "clf"),
                  "num_threads": 1},
        "eval": {"splits": ["val"]}, "wandb": {"enabled": False}})
    train(clf)
    return {"dcgan": tiny_run("dcgan", synthetic_shards, root / "dcgan"),
            "wgangp": tiny_run("wgangp", synthetic_shards, root / "wgangp", gan={"n_critic": 2}),
            "vae": tiny_run("vae", synthetic_shards, root / "vae", model={"z_dim": 8}),
            "clf": root / "clf", "shards": synthetic_shards}


def compare_request(trained: dict[str, Path], **kw):
    from facegan.evaluation.compare import CompareRequest

    base = dict(runs=[str(trained[f]) for f in ("dcgan", "wgangp", "vae")], shards=str(trained["shards"]),
                classifier=str(trained["clf"]), num_samples=64, num_real=64, grid_size=9)
    return CompareRequest(**{**base, **kw})


def test_compare_scores_each_run_like_eval_and_rates_attributes(runs: dict[str, Path], tmp_path: Path) -> None:
    from facegan.checkpoint import find_checkpoint, read_meta
    from facegan.data.labels import label_counts
    from facegan.data.stream import ShardSet
    from facegan.evaluation.compare import compare_runs, write_compare
    from facegan.evaluation.offline import EvalRequest, evaluate

    result = compare_runs(compare_request(runs))
    assert [r["label"] for r in result["runs"]] == ["dcgan", "wgangp", "vae"]
    assert [r["family"] for r in result["runs"]] == ["dcgan", "wgangp", "vae"]
    for r in result["runs"]:
        for key in ("fid_attr", "kid_attr", "precision_attr", "recall_attr", "ms_ssim"):
            assert key in r["scores"], (r["label"], key)
        meta = read_meta(find_checkpoint(runs[r["label"]]))
        assert r["kimg"] == meta["kimg"] and r["train_seconds"] == meta["train_seconds"] > 0
        assert r["grid"].shape == (9, 3, 32, 32) and r["grid"].dtype == torch.uint8
    # Only DCGAN's D gives logits; the critic's scores and the VAE have no d_accuracy.
    assert [("d_acc_real" in r["scores"]) for r in result["runs"]] == [True, False, False]

    # The same numbers as `facegan eval` on the same checkpoint with the same settings.
    for r in result["runs"]:
        alone = evaluate(EvalRequest(shards=str(runs["shards"]), checkpoint=str(runs[r["label"]]), num_samples=64,
                                     classifier=str(runs["clf"]), num_real=64, ms_ssim_pairs=64, kid_subset_size=64))
        for key in ("fid_attr", "kid_attr", "precision_attr", "recall_attr", "ms_ssim"):
            assert r["scores"][key] == pytest.approx(alone["scores"][key], rel=1e-5, abs=1e-6), (r["label"], key)

    # Real rates: the val labels, counted here by hand. Synthetic faces never vary Wavy_Hair, so the
    # classifier is not trained on it: reported as missing, not as the rate it would echo.
    shard_set = ShardSet.open(str(runs["shards"]))
    pos, n = label_counts(shard_set, "val")
    names = list(shard_set.attr_names)
    real = result["real"]
    assert real["num_labelled"] == n
    for a in ("Eyeglasses", "Bangs", "Wearing_Hat"):
        assert real["label_rates"][a] == pytest.approx(pos[names.index(a)] / n)
        assert 0 <= real["classifier_rates"][a] <= 1
        assert all(0 <= r["attr_rates"][a] <= 1 for r in result["runs"])
    assert real["label_rates"]["Wavy_Hair"] == 0.0 and real["classifier_rates"]["Wavy_Hair"] is None
    assert all(r["attr_rates"]["Wavy_Hair"] is None for r in result["runs"])

    paths = write_compare(result, tmp_path / "out" / "compare.html")
    doc = json.loads(paths["json"].read_text())
    assert [r["label"] for r in doc["runs"]] == ["dcgan", "wgangp", "vae"]
    assert all(Path(r["grid_png"]).is_file() for r in doc["runs"])
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["label"] for r in rows] == ["dcgan", "wgangp", "vae", "real val (labels)", "real val (classifier)"]
    assert float(rows[0]["fid_attr"]) == pytest.approx(result["runs"][0]["scores"]["fid_attr"])
    assert rows[3]["rate/Eyeglasses"] and not rows[3]["fid_attr"]

    page = paths["html"].read_text()
    assert page.count("<img") == 4 and page.count("src='data:image/png;base64,") == 4
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", page), "the page must not load anything"
    assert "http://" not in page and "https://" not in page
    for label in ("dcgan", "wgangp", "vae"):
        assert f"data-run='{label}'" in page
    check_in_browser(paths["html"], num_images=4)


def check_in_browser(html_path: Path, *, num_images: int) -> None:
    """Headless Chromium loads the page and decodes every inlined PNG (the page's script counts them)."""
    if chromium() is None:
        skip_unless_required("FACEGAN_REQUIRE_CHROMIUM", "chromium is not installed (make chromium installs it)")
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--virtual-time-budget=3000", "--dump-dom", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert f'data-images-total="{num_images}"' in dom and f'data-images-decoded="{num_images}"' in dom, dom[:500]
    assert len(re.findall(r"<tr data-run=", dom)) == 3 and len(re.findall(r"<tr data-attr=", dom)) == 4


def test_cli_writes_the_page_and_prints_the_tables(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from facegan.cli import main

    out = tmp_path / "cmp" / "page.html"
    args = ["compare", str(runs["dcgan"]), str(runs["vae"]), "--shards", str(runs["shards"]), "--classifier",
            str(runs["clf"]), "--num-samples", "32", "--num-real", "32", "--grid-size", "4", "--out", str(out),
            "--labels", "a,b"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fid_attr" in text and "Eyeglasses" in text and "wrote" in text
    assert out.is_file() and out.with_suffix(".json").is_file() and out.with_suffix(".csv").is_file()
    assert [r["label"] for r in json.loads(out.with_suffix(".json").read_text())["runs"]] == ["a", "b"]


def test_bad_requests_are_refused_before_any_scoring(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from facegan.cli import main
    from facegan.errors import CheckpointError
    from facegan.evaluation.compare import compare_runs

    with pytest.raises(ConfigError, match="does not exist"):
        compare_request(runs, runs=[str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="labels: 1 labels for 3 runs"):
        compare_request(runs, labels=["x"])
    with pytest.raises(ConfigError, match="num_samples"):
        compare_request(runs, num_samples=10**9)
    with pytest.raises(ConfigError, match="grid_size"):
        compare_request(runs, grid_size=100)
    with pytest.raises(ConfigError, match="num_real .*at least 10"):
        compare_request(runs, num_real=5)
    with pytest.raises(CheckpointError, match="has no generator"):
        compare_runs(compare_request(runs, runs=[str(runs["dcgan"]), str(runs["clf"])]))
    assert main(["compare", str(tmp_path / "nope"), "--shards", str(runs["shards"]), "--classifier",
                 str(runs["clf"])]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(runs["dcgan"]), "--shards", str(runs["shards"]), "--classifier", str(runs["clf"]),
                 "--out", str(tmp_path / "page.txt")]) == 2
    assert "--out: expected a .html file" in capsys.readouterr().err
