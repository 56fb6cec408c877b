"""Attribute classifiers: shapes, the majority baseline, learning, checkpoints, exact resume, Ray.

    .venv/bin/python -m pytest -q tests/test_classifier.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import REPO
from facegan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from facegan.cli import main as cli
from facegan.config import from_dict, to_dict
from facegan.data.synthetic import SYNTHETIC_DRAWN
from facegan.families import RunConfig, load_run_config
from facegan.families.classifier.nets import CLASSIFIERS
from facegan.families.classifier.scoring import (EVAL_JSON, evaluate_classifier, load_classifier, majority_accuracy,
                                                 majority_values)
from facegan.hooks import Hooks
from facegan.loop import train as train_classifier


def tiny_cfg(shards: Path, out: Path, **sections: dict[str, Any]) -> RunConfig:
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "classifier", "arch": "report_cnn", "resolution": 32},
        "train": {"total_kimg": 0.4, "tick_kimg": 0.1, "checkpoint_kimg": 0.2, "out_dir": str(out),
                  "num_threads": 1, "deterministic": True},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


@pytest.mark.parametrize("arch,feature_dim", [("report_cnn", 1024), ("resnet18", 512)])
@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_logits_and_features(arch: str, feature_dim: int, resolution: int) -> None:
    torch.manual_seed(0)
    net = CLASSIFIERS[arch](num_attrs=40, resolution=resolution)
    img = torch.rand(3, 3, resolution, resolution) * 2 - 1
    logits = net(img)
    assert logits.shape == (3, 40)
    assert net.features(img).shape == (3, feature_dim) and net.feature_dim == feature_dim
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()  # features() is the input of the logit layer: the logits follow from it
    torch.testing.assert_close(net(img), (net.head(net.features(img))))


def test_report_cnn_dense_layer_follows_the_resolution() -> None:
    # 3x3 stride-3 pools: 32 -> 10 -> 3 -> 1, 64 -> 21 -> 7 -> 2, 128 -> 42 -> 14 -> 4.
    for resolution, side in ((32, 1), (64, 2), (128, 4)):
        net = CLASSIFIERS["report_cnn"](num_attrs=40, resolution=resolution)
        assert net.dense[1].in_features == 128 * side * side
        assert [m.out_channels for m in net.convs if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
        assert net.dropout.p == 0.3 and net.head.out_features == 40


def test_majority_baseline_on_a_toy_with_known_answer() -> None:
    train = np.array([[1, 0, 1, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]])    # 4 faces, 4 attributes
    majority = majority_values(train.sum(0), len(train))
    assert majority.tolist() == [1, 0, 0, 0]                    # 3/4, 1/4, 2/4 (tie -> 0), 2/4
    split = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1], [1, 0, 1, 0]])
    acc = majority_accuracy(majority, split.sum(0), len(split))
    np.testing.assert_allclose(acc, [2 / 5, 4 / 5, 1 / 5, 1 / 5])


@pytest.fixture(scope="module")
def trained(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A short report-CNN run on the session's synthetic shards (4 kimg: 250 steps of 16, ~5 s)."""
    out = tmp_path_factory.mktemp("clf") / "run"
    # fp32, NCHW: the round-trip test below wants the run's own final scores bit for bit from the
    # reloaded (fp32, NCHW) model; precision auto would train in bf16 + channels_last on a bf16 CPU.
    cfg = tiny_cfg(synthetic_shards, out, train={"total_kimg": 4, "tick_kimg": 1, "checkpoint_kimg": 2,
                                                 "deterministic": False, "precision": "fp32",
                                                 "channels_last": False}, eval={"every_kimg": 2})
    nets: list[torch.nn.Module] = []
    metrics = train_classifier(cfg, hooks=Hooks(wrap_model=lambda m, device: nets.append(m) or m))
    return {"cfg": cfg, "out": out, "metrics": metrics, "net": nets[0]}


def test_training_beats_the_majority_baseline(trained: dict[str, Any], synthetic_shards: Path) -> None:
    doc = json.loads((trained["out"] / EVAL_JSON).read_text())
    assert doc["scored_attrs"] == [a for a in doc["scored_attrs"] if a in SYNTHETIC_DRAWN]
    assert sorted(doc["scored_attrs"]) == sorted(SYNTHETIC_DRAWN)   # the 29 fixed attributes do not count
    val, test = doc["splits"]["val"], doc["splits"]["test"]
    assert val["num_images"] + test["num_images"] == 40 and set(test["per_attr"]) == set(SYNTHETIC_DRAWN)
    n = val["num_images"] + test["num_images"]

    def pooled(key: str) -> float:
        return (val[key] * val["num_images"] + test[key] * test["num_images"]) / n

    assert pooled("mean_accuracy") > pooled("mean_majority_baseline") + 0.08, (val, test)
    assert trained["metrics"]["eval/test/mean_acc"] == test["mean_accuracy"]
    assert trained["metrics"]["kimg"] == pytest.approx(4.0, abs=0.02)
    # The bar can fail: the same net untrained sits at or below the baseline.
    torch.manual_seed(0)
    fresh = CLASSIFIERS["report_cnn"](num_attrs=40, resolution=32)
    untrained = [evaluate_classifier(fresh, synthetic_shards, split, scored=list(SYNTHETIC_DRAWN))
                 for split in ("val", "test")]
    assert sum(r["mean_margin"] * r["num_images"] for r in untrained) / n < 0.02
    # Periodic evaluations reached the sinks at ticks.
    ticks = [json.loads(line) for line in (trained["out"] / "losses.jsonl").read_text().splitlines()]
    assert sum("eval/val/mean_acc" in r for r in ticks if r["kind"] == "tick") == 2


def test_checkpoint_round_trip_gives_identical_outputs(trained: dict[str, Any], synthetic_shards: Path) -> None:
    model = load_classifier(trained["out"])           # a run folder: its newest checkpoint
    assert not model.training and Path(model.checkpoint).name == "ckpt-000004000"
    assert model.scored_attrs == json.loads((trained["out"] / EVAL_JSON).read_text())["scored_attrs"]
    img = torch.rand(5, 3, 32, 32) * 2 - 1
    net = trained["net"].eval()
    with torch.no_grad():
        torch.testing.assert_close(model(img), net(img), rtol=0, atol=0)
        torch.testing.assert_close(model.features(img), net.features(img), rtol=0, atol=0)
        torch.testing.assert_close(model(img), model(img), rtol=0, atol=0)   # eval mode: no dropout
    # Scoring the loaded model reproduces the run's own final evaluation.
    again = evaluate_classifier(model, synthetic_shards, "test")
    saved = json.loads((trained["out"] / EVAL_JSON).read_text())["splits"]["test"]
    assert again["per_attr"] == saved["per_attr"] and again["mean_margin"] == saved["mean_margin"]


def test_eval_cli_prints_the_table_and_writes_json(trained: dict[str, Any], synthetic_shards: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert cli(["classifier", "eval", "--checkpoint", str(trained["out"]), "--shards", str(synthetic_shards),
                "--split", "val", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "majority" in text and "Eyeglasses" in text and "\nmean " in text and "Attractive" not in text
    assert json.loads(out.read_text())["split"] == "val"


def test_stop_and_resume_ends_with_identical_parameters(synthetic_shards: Path, tmp_path: Path) -> None:
    ev = {"every_kimg": 0.1}  # evaluations between steps must not disturb the random streams either
    full = tiny_cfg(synthetic_shards, tmp_path / "full", eval=ev)
    train_classifier(full)
    first = tiny_cfg(synthetic_shards, tmp_path / "split", eval=ev, train={"total_kimg": 0.144})   # stops at step 9
    train_classifier(first)
    resumed = train_classifier(tiny_cfg(synthetic_shards, tmp_path / "split", eval=ev, train={"resume": "latest"}))
    assert resumed["step"] == 25
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b, meta = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert meta["step"] == 25 and meta["kind"] == "classifier"
    for k in a["C"]:
        torch.testing.assert_close(a["C"][k], b["C"][k], rtol=0, atol=0, msg=k)
    # Evaluating at ticks leaves training alone: a run without evaluations ends the same.
    train_classifier(tiny_cfg(synthetic_shards, tmp_path / "no_eval"))
    d, _ = load_checkpoint(list_checkpoints(tmp_path / "no_eval" / "checkpoints")[-1])
    assert all(torch.equal(a["C"][k], d["C"][k]) for k in a["C"])
    other = tiny_cfg(synthetic_shards, tmp_path / "other", train={"seed": 1})
    train_classifier(other)
    c, _ = load_checkpoint(list_checkpoints(tmp_path / "other" / "checkpoints")[-1])
    assert any(not torch.equal(a["C"][k], c["C"][k]) for k in a["C"])


def test_named_attributes_only(synthetic_shards: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(synthetic_shards, tmp_path / "r", model={"attrs": ["Smiling", "Male"]},
                   train={"total_kimg": 0.032}, eval={"splits": ["test"]})
    metrics = train_classifier(cfg)
    doc = json.loads((tmp_path / "r" / EVAL_JSON).read_text())
    assert doc["scored_attrs"] == ["Male", "Smiling"] and set(doc["splits"]) == {"test"}
    assert {k.rsplit("/", 1)[1] for k in metrics if "/acc/" in k} == {"Male", "Smiling"}
    with pytest.raises(CheckpointError, match="scored attributes"):   # resuming with other attributes
        train_classifier(tiny_cfg(synthetic_shards, tmp_path / "r", train={"resume": "latest"}))


def test_bad_configs_and_inputs_fail_naming_the_field(synthetic_shards: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("classifier_demo.yaml", "classifier_celeba64.yaml"):
        load_run_config(str(REPO / "configs" / name), [], default_family="classifier")
    good = to_dict(tiny_cfg(synthetic_shards, tmp_path / "r"))
    cases = [
        ({"model": {"arch": "vgg16"}}, "model.arch: expected one of ['report_cnn', 'resnet18'], got 'vgg16'"),
        ({"model": {"arch": "resnet18", "dropout": 0.3}}, "model.dropout: only report_cnn has it"),
        ({"model": {"dropout": 1.5}}, "model.dropout: expected 0 <= p < 1, got 1.5"),
        ({"optim": {"lr": 0}}, "optim.lr: expected 0 < lr < 1, got 0"),
        ({"optim": {"g_lr": 1e-3}}, "unknown key optim.g_lr"),
        ({"train": {"ema_kimg": 1}}, "unknown key train.ema_kimg"),
        ({"eval": {"splits": ["dev"]}}, "eval.splits: expected names among train, val, test"),
        ({"model": {"resolution": 64}}, "model.resolution 64 does not match"),
        ({"model": {"attrs": ["Smiling", "Smiles"]}}, "model.attrs: Smiles not among the shards' attributes"),
    ]
    path = tmp_path / "bad.yaml"
    for change, message in cases:
        data = {k: {**v, **change.get(k, {})} if isinstance(v, dict) else v for k, v in good.items()}
        path.write_text(json.dumps(data))
        assert cli(["classifier", "train", str(path), "--no-ray"]) == 2, change
        err = capsys.readouterr().err
        assert message in err, (change, err)
    assert cli(["classifier", "train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file does not exist" in capsys.readouterr().err
    assert cli(["classifier", "eval", "--checkpoint", str(tmp_path), "--shards", str(synthetic_shards)]) == 2
    assert "no facegan checkpoint here" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_ray_run(ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.launch.trainer import run_training

    cfg = tiny_cfg(synthetic_shards, tmp_path / "ray", train={"total_kimg": 0.32, "tick_kimg": 0.16,
                                                              "checkpoint_kimg": 0.32, "deterministic": False},
                   ray={"num_workers": 2, "max_failures": 0}, wandb={"enabled": True, "project": "facegan-test"})
    result = run_training(cfg, config_dict=to_dict(cfg), train_fn=train_classifier)
    assert result["metrics"]["step"] == 10 and "eval/test/mean_acc" in result["metrics"]
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert meta["kind"] == "classifier" and meta["world_size"] == 2 and meta["images_seen"] == 320
    assert set(state) == {"C", "opt_C", "scaler", "family", "augment", "rng"} and "torch_rank1" in state["rng"]
    doc = json.loads((tmp_path / "ray" / EVAL_JSON).read_text())
    # Both ranks scored their halves of each split: every face counted once.
    assert doc["splits"]["val"]["num_images"] == 25 and doc["splits"]["test"]["num_images"] == 15
    assert load_classifier(result["checkpoint"]).scored_attrs == doc["scored_attrs"]
    assert result["wandb_dir"] and Path(result["wandb_dir"]).name.startswith("offline-run-")
