"""The run's state as one definition (facegan.runstate), the loop's schedule helper and its sinks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facegan.checkpoint import list_checkpoints, load_checkpoint
from facegan.errors import CheckpointError
from facegan.loop import Every, every_kimg
from facegan.runstate import Progress, RankRNG, RunState, Stateful
from facegan.runtime import BadSteps
from facegan.stats import JsonlSink, ProgressSink, Sink


class Pipe:
    """A component added later (an augmentation pipe with its probability p): a tensor in state.pt."""

    def __init__(self) -> None:
        self.p = torch.tensor(0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p": self.p.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state:                      # {}: a checkpoint from before the pipe existed, p stays fresh
            self.p = state["p"].clone()


def make_state(seed: int, *, with_pipe: bool = True) -> tuple[RunState, dict]:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(seed)
    parts = {"net": net, "opt": opt, "pipe": Pipe(), "gen": gen,
             "progress": Progress(loader={"seed": seed}), "bad": BadSteps(max_in_row=3, rank=0, advice="")}
    components = {"N": net, "opt_N": opt, "rng": RankRNG(gen, torch.device("cpu"), rank=0, world_size=1)}
    if with_pipe:
        components["augment"] = parts["pipe"]
    state = RunState(components, counters=(parts["progress"], parts["bad"]), info=lambda: {"family": "test"})
    return state, parts


def test_what_is_saved_is_what_resume_restores(tmp_path: Path) -> None:
    state, a = make_state(0)
    a["pipe"].p = torch.tensor(0.25)
    a["progress"].step, a["progress"].images_seen, a["progress"].batches = 7, 56, 7
    a["bad"].total = 2
    path = state.save(tmp_path / "ckpt-000000056", keep=2, rank=0)
    saved, meta = load_checkpoint(path)
    assert set(saved) == {"N", "opt_N", "rng", "augment"}
    assert meta["step"] == 7 and meta["images_seen"] == 56 and meta["bad_steps"] == 2 and meta["family"] == "test"
    assert meta["loader"] == {"seed": 0, "start_batch": 7}

    fresh, b = make_state(1)
    assert not torch.equal(b["net"].weight, a["net"].weight)
    fresh.load(saved, meta, where=path)
    assert torch.equal(b["net"].weight, a["net"].weight) and float(b["pipe"].p) == 0.25
    assert b["opt"].state_dict()["state"][0]["exp_avg"].equal(a["opt"].state_dict()["state"][0]["exp_avg"])
    assert (b["progress"].step, b["progress"].images_seen, b["progress"].batches, b["bad"].total) == (7, 56, 7, 2)
    assert torch.equal(b["gen"].get_state(), a["gen"].get_state())


def test_a_component_older_checkpoints_lack_starts_fresh_and_a_missing_net_is_named(tmp_path: Path) -> None:
    old_state, _ = make_state(0, with_pipe=False)
    path = old_state.save(tmp_path / "ckpt-000000000", keep=1, rank=0)
    saved, meta = load_checkpoint(path)
    state, parts = make_state(1)
    state.load(saved, meta, where=path)
    assert float(parts["pipe"].p) == 0.0
    del saved["N"]
    with pytest.raises(CheckpointError, match=r"does not fit this model: N: "):
        state.load(saved, meta, where=path)


def test_checkpoints_are_kept_and_only_rank_0_writes(tmp_path: Path) -> None:
    state, parts = make_state(0)
    for n in range(3):
        parts["progress"].images_seen = n
        state.save(tmp_path / f"ckpt-{n:09d}", keep=2, rank=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000001", "ckpt-000000002"]
    assert state.save(tmp_path / "ckpt-000000009", keep=2, rank=1) is None
    assert not (tmp_path / "ckpt-000000009").exists()


def test_meta_keys_are_written_once() -> None:
    progress = Progress()
    state = RunState({}, counters=(progress,), info=lambda: {"step": 3})
    with pytest.raises(ValueError, match=r"meta keys \['step'\] are written twice"):
        state.meta()


def test_every_event_comes_due_at_the_next_multiple() -> None:
    ticks = Every(100, images_seen=0)
    assert not ticks.due(96) and ticks.due(104)
    ticks.advance(104)
    assert ticks.next == 200 and not ticks.due(192) and ticks.due(200)
    resumed = Every(100, images_seen=200)              # a resumed run: the next one after where it stopped
    assert resumed.next == 300
    never = every_kimg(0.0, batch_total=8, images_seen=0)
    assert not never.due(10**9)
    assert every_kimg(0.001, batch_total=8, images_seen=0).images == 8   # at least one global batch


def test_every_sink_and_every_run_state_part_has_its_protocol() -> None:
    from facegan.launch.sinks import WandbSink

    for cls in (JsonlSink, ProgressSink, WandbSink):
        assert issubclass(cls, Sink), cls
    assert isinstance(torch.nn.Linear(1, 1), Stateful) and isinstance(Progress(), Stateful)
    assert isinstance(BadSteps(max_in_row=1, rank=0, advice=""), Stateful)
