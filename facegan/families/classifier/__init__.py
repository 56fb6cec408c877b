"""Face-attribute classifiers as a one-phase family on the generic loop: the "favorite face"
report's CNN (`report_cnn`) and ResNet-18 from scratch (`resnet18`).

    facegan classifier train configs/classifier_celeba64.yaml [--no-ray]
    facegan classifier eval --checkpoint runs/classifier_celeba64 --shards data/celeba64 --split test

One phase, `fit`: masked BCE over the attributes whose train-split labels vary (or `model.attrs`).
At `eval.every_kimg` and at the end the `eval.splits` are scored against the majority baseline
(steps.py; scoring.py holds the baseline, the tables and `load_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from facegan.config import CommonTrainConfig, require
from facegan.families.base import DataInfo, Family, NoOptions, OneAdam, OptimizerSpec, Phase

ARCHS = ("report_cnn", "resnet18")
KIND = "classifier"          # meta["kind"] of classifier checkpoints (format 1 had only this)


@dataclass(kw_only=True)
class ClassifierModelConfig:
    family: str = "classifier"
    arch: Literal["report_cnn", "resnet18"] = "report_cnn"
    resolution: int = 64                   # must match the shards
    dense_units: int | None = None         # report_cnn only (default 1024)
    dropout: float | None = None           # report_cnn only (default 0.3)
    attrs: list[str] = field(default_factory=list)   # attributes trained and scored; []: every
                                           # attribute whose train-split labels take both values

    def __post_init__(self) -> None:
        require(self.arch in ARCHS, f"model.arch: expected one of {list(ARCHS)}, got {self.arch!r}")
        require(32 <= self.resolution <= 1024 and self.resolution & (self.resolution - 1) == 0,
                f"model.resolution: expected a power of two in 32..1024 (32, 64, 128), got {self.resolution}")
        if self.arch != "report_cnn":
            for name in ("dense_units", "dropout"):
                require(getattr(self, name) is None, f"model.{name}: only report_cnn has it, not {self.arch}")
        require(self.dense_units is None or 1 <= self.dense_units <= 65536,
                f"model.dense_units: expected 1..65536, got {self.dense_units}")
        require(self.dropout is None or 0 <= self.dropout < 1, f"model.dropout: expected 0 <= p < 1, got {self.dropout}")
        dupes = sorted({a for a in self.attrs if self.attrs.count(a) > 1})
        require(not dupes, f"model.attrs: listed more than once: {', '.join(dupes)}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the architecture besides num_attrs."""
        kw: dict[str, Any] = {"resolution": self.resolution}
        if self.arch == "report_cnn":
            kw.update(dense_units=self.dense_units or 1024, dropout=0.3 if self.dropout is None else self.dropout)
        return kw


@dataclass(kw_only=True)
class ClassifierOptimConfig(OneAdam):
    lr: float = 1e-3                       # Adam
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.weight_decay >= 0, f"optim.weight_decay: expected >= 0, got {self.weight_decay}")


@dataclass(kw_only=True)
class ClassifierEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test"])   # scored at the end of the run
    every_kimg: float = 0.0                # >0: also score eval.splits every this many kimg (at ticks)
    batch_size: int = 256                  # per rank

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        require(not bad, f"eval.splits: expected names among train, val, test, got {bad}")
        require(self.every_kimg >= 0, f"eval.every_kimg: expected >= 0 (0: only at the end), got {self.every_kimg}")
        require(1 <= self.batch_size <= 65536, f"eval.batch_size: expected 1..65536, got {self.batch_size}")


class Classifier(Family):
    name = "classifier"
    model_options = ClassifierModelConfig
    optim_options = ClassifierOptimConfig
    gan_options = NoOptions
    train_options = CommonTrainConfig
    eval_options = ClassifierEvalConfig
    needs_labels = True
    generator = None
    ema = None
    metrics = ("loss/bce", "acc/train")
    curves = (("loss/bce",), ("acc/train",))
    shape_keys = ("arch", "resolution", "dense_units")
    smoke = {"model": {"resolution": 32, "dense_units": 16}, "eval": {"splits": ["val"]}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("fit", opt="C")]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        o = cfg.optim
        return {"C": OptimizerSpec(nets=("C",), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.classifier.nets import CLASSIFIERS

        return {"C": CLASSIFIERS[cfg.model.arch](num_attrs=len(data.attr_names), **cfg.model.build_kwargs())}

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.classifier.steps import ClassifierSteps

        return ClassifierSteps(cfg, data)

    def upgrade_v1(self, state: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Format 1 kept the net as "model" and its Adam as "opt"; its config had no model.family."""
        state = dict(state)
        if "model" in state:
            state["C"] = state.pop("model")
        if "opt" in state:
            state["opt_C"] = state.pop("opt")
        meta = dict(meta, family=self.name)
        config = dict(meta.get("config") or {})
        config["model"] = dict(config.get("model") or {}, family=self.name)
        meta["config"] = config
        meta["model"] = config["model"]
        return state, meta


FAMILY = Classifier()
