"""WGAN-GP (with DiffAugment), DCGAN (with ADA and R1) and the VAE on Ray Train: 2 DDP workers (one
per node of the shared test cluster) run the generic loop to the end, their parameters agree at every
report, the run's checkpoint loads, and ADA's p is one value for the run (checkpointed, reported).

    .venv/bin/python -m pytest -q tests/test_ray_families.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from facegan.config import to_dict

FAMILY_SECTIONS = {
    # Two critic batches per step: the repeat runs through DDP on every worker; DiffAugment on every
    # image the critic sees (reals, fakes and the penalty's interpolates), each rank its own draws.
    "wgangp": {"model": {"family": "wgangp"}, "gan": {"n_critic": 2}, "augment": {"kind": "diffaugment"}},
    # ADA: p starts at 0.5 and moves every 2 steps from r_t all-reduced over the workers; R1's double
    # backward every other step (synchronised by hand, like the gradient penalty).
    "dcgan": {"model": {"family": "dcgan"}, "augment": {"kind": "ada", "p": 0.5, "interval": 2, "speed_kimg": 0.16},
              "gan": {"r1_gamma": 1.0, "r1_interval": 2}},
    # The ELBO on val at the end: every rank scores its share, sums all-reduced over gloo.
    "vae": {"model": {"family": "vae", "z_dim": 8}, "optim": {"lr": 2e-3}},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_SECTIONS))
def test_two_worker_ray_run(family: str, ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    from test_launch import _ship_by_value, observations, observed_train, tiny_config

    from facegan.checkpoint import load_checkpoint
    from facegan.families.loading import load_generator
    from facegan.launch.trainer import run_training

    _ship_by_value()
    cfg = tiny_config(synthetic_shards, tmp_path / "run", steps=6, tick_steps=2, ckpt_steps=6,
                      ray={"placement_strategy": "STRICT_SPREAD"}, **FAMILY_SECTIONS[family])
    result = run_training(cfg, config_dict=to_dict(cfg), train_fn=observed_train)

    per_step = 2 if family == "wgangp" else 1      # real batches per step (n_critic)
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert meta["family"] == family and meta["world_size"] == 2
    assert meta["images_seen"] == meta["step"] * per_step * 2 * 8 and meta["step"] >= 3
    rows = observations(Path(cfg.train.out_dir))
    digests = {rank: {r["step"]: r["digest"] for r in rows if r["event"] == "report"
                      and r["file"].startswith(f"rank{rank}-")} for rank in (0, 1)}
    assert digests[0] and digests[0] == digests[1], "ranks diverged"
    assert len(set(digests[0].values())) == len(digests[0]), "parameters did not change between reports"
    img = load_generator(tmp_path / "run").sample(2, seed=0)
    assert img.shape == (2, 3, 32, 32)
    if family == "vae":
        assert "eval/val/elbo" in result["metrics"] and result["metrics"]["eval/val/elbo"] < 0
        final = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()
                 if "eval/val/elbo" in line]
        assert final and final[-1]["eval/val/elbo"] == pytest.approx(result["metrics"]["eval/val/elbo"])
    elif family == "wgangp":
        assert {"loss/gp", "wasserstein", "loss/g"} <= set(result["metrics"])
        assert state["augment"] == {}      # DiffAugment has no state
    else:
        # p moved from 0.5 (3 adjustments of 0.1 in 6 steps), the checkpoint holds the value the
        # workers reported: one p for the run, not one per worker.
        p = float(state["augment"]["p"])
        assert p != pytest.approx(0.5) and p == pytest.approx(result["metrics"]["augment_p"])
        assert result["metrics"]["loss/r1"] > 0
