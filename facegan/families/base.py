"""What a model family is: the protocol the generic loop (facegan.loop) runs, declared without torch.

A family is one folder, `facegan/families/<name>/`, plus one line in `facegan.families.FAMILIES`:

    __init__.py   its option dataclasses (`model:`, `optim:`, `gan:` ...) and a `Family` subclass
                  declaring nets, optimizers, phases, metrics and capabilities; imports no torch,
                  so a run config can be validated without it
    nets.py       nn.Modules only
    steps.py      a `facegan.families.steps.Steps` subclass: one method per phase, its sampling,
                  and a state_dict() for non-parameter training state (BEGAN's k_t, noise levels)

The loop builds `family.build_nets(cfg, data)`, one Adam per `family.optimizers(cfg)` entry, then
per step runs `family.phases(cfg)` in order: each Phase runs `repeat` times, draws a fresh real
batch when `uses_data`, calls `steps.<name>(ctx)` for (loss, scalars), backpropagates the loss and
steps its optimizer. It never asks which family it runs (StyleGAN2-ADA's phase list; torchtitan's
ModelSpec).

    family = FAMILIES["wgangp"]
    family.phases(cfg)        # [Phase("critic", opt="D", repeat=5), Phase("g", opt="G", uses_data=False)]
    family.optimizers(cfg)    # {"G": OptimizerSpec(nets=("G",), lr=1e-4, betas=(0.0, 0.9)), ...}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from facegan.config import ConfigError, GanEvalConfig, TrainConfig, require

if TYPE_CHECKING:  # the torch side, imported only by the methods that need it
    from torch import nn

    from facegan.families.steps import Steps


@dataclass(frozen=True)
class Phase:
    """One named part of a training step: `steps.<name>(ctx)` gives a loss that steps optimizer `opt`.

    repeat:    runs per step (a WGAN critic phase x5).
    uses_data: draws a fresh real batch before each run; a phase with uses_data=False sees the
               step's latest batch (its attributes, its size) without consuming the stream.
    """

    name: str
    opt: str
    repeat: int = 1
    uses_data: bool = True

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ConfigError(f"phase {self.name}: repeat must be >= 1, got {self.repeat}")


@dataclass(frozen=True)
class OptimizerSpec:
    """One Adam optimizer over the parameters of `nets`, with the rate, betas and weight decay of
    the run config it was declared from. The loop builds it from these; `Steps.lr_factors` scale
    `lr` during training; a PBT trial resumed from another trial's checkpoint gets this spec's
    `lr` and `betas`, taken from its own (mutated) config, in the optimizer's param groups
    (facegan.launch.tune._resume_point)."""

    nets: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass(frozen=True)
class DataInfo:
    """What a family may need to know about its data beyond the images, from the shard set when
    training and from the checkpoint meta when loading (so a checkpoint works away from its shards).

    attr_names:      the shard set's attribute names (one 0/1 label each), [] when unlabelled
    train_positives: per attribute, train-split faces with it (None: not counted)
    train_count:     labelled train-split faces
    shard_recipe:    the recipe the shards were built with (how photos must be cropped to match)
    resolution:      (height, width) of the images
    """

    attr_names: tuple[str, ...] = ()
    train_positives: tuple[int, ...] | None = None
    train_count: int = 0
    shard_recipe: dict[str, Any] = field(default_factory=dict)
    resolution: tuple[int, int] = (0, 0)

    @property
    def attr_prevalence(self) -> list[float] | None:
        if self.train_positives is None:
            return None
        return [p / max(self.train_count, 1) for p in self.train_positives]

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"attr_names": list(self.attr_names), "shard_recipe": self.shard_recipe,
                                "resolution": list(self.resolution)}
        if self.train_positives is not None:
            meta.update(train_positives=list(self.train_positives), train_count=self.train_count,
                        attr_prevalence=self.attr_prevalence)
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "DataInfo":
        pos = meta.get("train_positives")
        if pos is None and meta.get("attr_prevalence") is not None:
            # v1 GAN checkpoints stored the rates only; 10^6 faces keep them to 6 digits.
            count = 1_000_000
            pos = [round(r * count) for r in meta["attr_prevalence"]]
        else:
            count = int(meta.get("train_count", 0))
        res = meta.get("resolution") or meta.get("model", {}).get("resolution") or 0
        hw = (res, res) if isinstance(res, int) else tuple(int(v) for v in res)
        return cls(attr_names=tuple(meta.get("attr_names") or ()),
                   train_positives=tuple(int(p) for p in pos) if pos is not None else None,
                   train_count=count, shard_recipe=dict(meta.get("shard_recipe") or {}), resolution=hw)


# ============================================================================ shared option sections

def _power_of_two(value: int) -> bool:
    return value >= 16 and value & (value - 1) == 0


@dataclass(kw_only=True)
class GanModelConfig:
    """`model:` of the convolutional GAN families (DCGAN and the families built on its nets)."""

    family: str = "dcgan"
    resolution: int | list[int] = 64      # must match the shards: N (a power of two); [h, w] where the family allows
    z_dim: int = 100
    base_channels: int = 64
    g_batchnorm: bool = True
    d_batchnorm: bool = True
    d_dropout: float = 0.0

    non_square: ClassVar[bool] = False   # the family's nets take (height, width) sizes
    max_side: ClassVar[int] = 1024       # generated images are at most this large per side

    def __post_init__(self) -> None:
        if isinstance(self.resolution, list):
            require(self.non_square, f"model.resolution: the {self.family} family makes square images only (a power "
                                     f"of two), got {self.resolution}")
            require(len(self.resolution) == 2 and all(16 <= v <= self.max_side for v in self.resolution),
                    f"model.resolution: expected [height, width], both in 16..{self.max_side}, got {self.resolution}")
        else:
            require(_power_of_two(self.resolution) and self.resolution <= self.max_side,
                    f"model.resolution: expected a power of two in 16..{self.max_side} (32, 64, 128)"
                    f"{' or [height, width]' if self.non_square else ''}, got {self.resolution}")
        require(1 <= self.z_dim <= 4096, f"model.z_dim: expected 1..4096, got {self.z_dim}")
        require(1 <= self.base_channels <= 1024, f"model.base_channels: expected 1..1024, got {self.base_channels}")
        require(0 <= self.d_dropout < 1, f"model.d_dropout: expected 0 <= p < 1, got {self.d_dropout}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        r = self.resolution
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))


@dataclass(kw_only=True)
class OneAdam:
    """`optim:` of a family with one Adam over its nets; families subclass it for their defaults."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        require(0 < self.lr < 1, f"optim.lr: expected 0 < lr < 1, got {self.lr}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            require(0 <= v < 1, f"optim.{name}: expected 0 <= beta < 1, got {v}")


@dataclass(kw_only=True)
class TwoTimescaleOptim:
    """`optim:` of the G/D families: Adam with separate rates for G and D."""

    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        for name in ("g_lr", "d_lr"):
            v = getattr(self, name)
            require(0 < v < 1, f"optim.{name}: expected 0 < lr < 1, got {v}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            require(0 <= v < 1, f"optim.{name}: expected 0 <= beta < 1, got {v}")

    def spec(self, net: str, lr_field: str) -> OptimizerSpec:
        return OptimizerSpec(nets=(net,), lr=getattr(self, lr_field), betas=(self.beta1, self.beta2))


@dataclass(kw_only=True)
class NoOptions:
    """A `gan:` section for families that have no such options (it must be empty)."""


@dataclass(kw_only=True)
class R1Options:
    """R1 (Mescheder et al. 2018) in a non-saturating family's `gan:` section: gamma/2 E[||grad_x D(x)||^2]
    on the (augmented) reals, added to the D phase's loss. Lazy as StyleGAN2: only every
    `r1_interval` steps, weighted by the interval, so its average strength is the same."""

    r1_gamma: float = 0.0             # gamma, >= 0 (0: no R1; StyleGAN2 uses 0.01..100 by resolution)
    r1_interval: int = 16             # steps between R1 terms (1: every step), 1..1000

    def __post_init__(self) -> None:
        self.r1_gamma = finite_number("gan.r1_gamma", self.r1_gamma)
        require(0 <= self.r1_gamma <= 1e4, f"gan.r1_gamma: expected 0..10000, got {self.r1_gamma}")
        int_in_range("gan.r1_interval", self.r1_interval, 1, 1000)

    def r1_weight(self, step: int) -> float:
        """The R1 term's weight at 0-based step `step`: gamma/2 * interval where due, else 0."""
        if self.r1_gamma == 0 or step % self.r1_interval:
            return 0.0
        return self.r1_gamma / 2 * self.r1_interval


def check_r1_precision(cfg: Any) -> None:
    """fp16 is refused with R1 on: GradScaler scales only the loss the loop backpropagates, and the
    penalty's inner gradient is taken inside the phase, unscaled, where fp16 underflows."""
    require(cfg.gan.r1_gamma == 0 or cfg.train.precision != "fp16",
            "train.precision: fp16 is not supported with gan.r1_gamma > 0 (R1's inner gradient is taken outside "
            "the loss scaler); use bf16, fp32 or auto")


def int_in_range(name: str, value: Any, low: int, high: int) -> int:
    """`value` if it is an integer in [low, high], else ConfigError naming `name` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: expected an integer in {low}..{high}, got {value!r}")
    return value


def finite_number(name: str, value: Any) -> float:
    """`value` as a float, or ConfigError naming `name` (bools, strings, NaN and inf are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


# ============================================================================ the family

class Family:
    """A model family: the declarations the loop, checkpoints, sweeps, Tune and the CLI read.

    Subclasses set the class attributes and implement the three `build_*`/`phases` methods, which
    import the family's torch modules lazily (keeping this declaration torch-free).
    """

    name: ClassVar[str]
    # Option dataclasses of the run-config sections this family reads (facegan.families.RunConfig).
    model_options: ClassVar[type] = GanModelConfig
    optim_options: ClassVar[type] = TwoTimescaleOptim
    gan_options: ClassVar[type] = NoOptions
    train_options: ClassVar[type] = TrainConfig
    eval_options: ClassVar[type] = GanEvalConfig
    # Capabilities.
    needs_labels: ClassVar[bool] = False       # needs attribute labels (train-split counts in DataInfo)
    takes_attrs: ClassVar[bool] = False        # its G takes attribute rows (generate --attrs, blend)
    generator: ClassVar[str | None] = "G"      # the net that makes images (None: not a generative family)
    ema: ClassVar[str | None] = "G"            # the net that gets an exponential moving average copy
    discriminator: ClassVar[str | None] = None  # a net scoring images with logits (> 0: real): d_accuracy
    latent_codes: ClassVar[bool] = False       # its latent has named codes (InfoGAN): edit --set
    reset_optimizers_on_stage: ClassVar[bool] = False  # clear Adam moments when Steps.stage changes (ProGAN)
    # The `augment.kind`s it takes (facegan.augpipe), and why it takes no others (the refusal names it).
    # augment_nets: the nets whose image input the loop sends through the pipe (ctx.nets["D"](x) is
    # D(pipe(x))); a family whose D must compare with its augmented input (BEGAN's autoencoder) lists
    # none and calls ctx.augment(x) itself.
    augment_kinds: ClassVar[tuple[str, ...]] = ("none",)
    augment_note: ClassVar[str] = "it has no discriminator: augmentation is for the images a GAN's D sees"
    augment_nets: ClassVar[tuple[str, ...]] = ("D",)
    # Whether `train.precision: auto` may pick bf16 autocast on a CPU with bf16 units (measured per
    # family on real faces by benchmarks/bench_precision.py); a family that keeps fp32 says why.
    cpu_bf16: ClassVar[bool] = True
    cpu_bf16_note: ClassVar[str] = ""
    # Scalars its phases report (besides the loop's own); sweeps may optimise any of them.
    metrics: ClassVar[tuple[str, ...]] = ()
    # Panels of loss_curve.png: each a tuple of scalar names plotted together (y from 0 to 1 if `unit`).
    curves: ClassVar[tuple[tuple[str, ...], ...]] = ()
    # model: fields that change parameter shapes: a checkpoint with other values cannot be resumed.
    shape_keys: ClassVar[tuple[str, ...]] = ("resolution", "z_dim", "base_channels", "g_batchnorm", "d_batchnorm")
    # Run-config sections for a tiny run on 32x32 labelled shards (the family test over the registry
    # and toy-size sweeps use them): small nets, no external files.
    smoke: ClassVar[dict[str, dict[str, Any]]] = {"model": {"resolution": 32, "z_dim": 16, "base_channels": 8}}

    # --- torch side (each implementation imports its nets/steps modules inside)
    def build_nets(self, cfg: Any, data: DataInfo) -> dict[str, "nn.Module"]:
        """The family's named nets, initialised (the loop seeds torch's RNG first)."""
        raise NotImplementedError

    def build_steps(self, cfg: Any, data: DataInfo) -> "Steps":
        """The object running the phases (and holding the family's non-parameter state)."""
        raise NotImplementedError

    # --- declarations
    def phases(self, cfg: Any) -> list[Phase]:
        raise NotImplementedError

    def optimizers(self, cfg: Any) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def validate(self, cfg: Any) -> None:
        """Cross-section checks of a whole run config (ConfigError naming the field)."""

    def upgrade_v1(self, state: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A format-1 checkpoint (written before families were packages) in today's layout. Format 1
        GAN checkpoints already name nets and optimizers the way format 2 does."""
        return state, meta

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def section_fields(family: Family) -> dict[str, type]:
    """Section name -> the dataclass a run config of `family` validates it into."""
    return {"model": family.model_options, "optim": family.optim_options, "gan": family.gan_options,
            "train": family.train_options, "eval": family.eval_options}


def option_keys(family: Family) -> set[str]:
    """Every dotted key the family-typed sections of a run config have (model.z_dim, gan.lambda_gp, ...)."""
    return {f"{section}.{f.name}" for section, cls in section_fields(family).items()
            for f in dataclasses.fields(cls) if f.init}
