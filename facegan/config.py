"""Typed, validated configuration: YAML/dicts load into dataclasses, unknown keys are errors.

Every config section is a keyword-only dataclass that validates itself in `__post_init__`
(raising `ConfigError` naming the field and the allowed range). `from_dict` turns a plain dict
(from YAML) into such a dataclass, recursing into nested sections; `apply_overrides` applies
`--set a.b=value` style overrides before validation so a bad override fails early too.

    recipe = load_yaml(ShardRecipe, "shards/celeba64.yaml", overrides=["resolution=128"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, mistyped or out of range; the message names the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return _parse_number(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _parse_number(text: str) -> float:
    """'2e-4', '0.5', and fractions like '1/15' (the papers write noise power that way)."""
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys raise ConfigError listing the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}"
            f" (valid keys{' in ' + where if where else ''}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if where and not str(exc).startswith(where):
            raise ConfigError(f"{where}.{exc}") from None
        raise


def to_dict(obj: Any) -> Any:
    """Plain-data (JSON/YAML-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ["a.b=value", ...] to a nested dict; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | Path, *, overrides: list[str] | None = None) -> T:
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def require(cond: bool, message: str) -> None:
    """Validation helper for __post_init__: raise ConfigError(message) unless cond."""
    if not cond:
        raise ConfigError(message)


# ============================================================================ run configs
# A training run is one `RunConfig`: `configs/*.yaml` (or a sweep trial) load into it, and every
# section validates itself so a bad value fails before any Ray job starts.

@dataclass(kw_only=True)
class DataConfig:
    shards: str = ""                       # shard set location (folder, fsspec URL)
    batch_size: int = 64                   # per training worker
    num_workers: int = 2                   # loader processes per training worker
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        require(bool(self.shards), "data.shards: expected the location of a shard set built by `facegan shards build`")
        require(self.batch_size >= 1, f"data.batch_size: expected >= 1, got {self.batch_size}")
        require(self.num_workers >= 0, f"data.num_workers: expected >= 0, got {self.num_workers}")
        require(self.shuffle_buffer >= 0, f"data.shuffle_buffer: expected >= 0, got {self.shuffle_buffer}")


@dataclass(kw_only=True)
class ModelConfig:
    family: str = "dcgan"
    resolution: int | list[int] = 64      # must match the shards: N (square) or [h, w] (e.g. [218, 178])
    z_dim: int = 100
    base_channels: int = 64
    g_batchnorm: bool = True
    d_batchnorm: bool = True
    d_dropout: float = 0.0

    def __post_init__(self) -> None:
        from facegan.models import FAMILIES

        require(self.family in FAMILIES, f"model.family: expected one of {sorted(FAMILIES)}, got {self.family!r}")
        if isinstance(self.resolution, list):
            require(len(self.resolution) == 2 and all(v >= 16 for v in self.resolution),
                    f"model.resolution: expected [height, width], both >= 16, got {self.resolution}")
            require(FAMILIES[self.family].non_square,
                    f"model.resolution: the {self.family} family makes square images only (a power of two); "
                    f"families with [height, width] sizes: {sorted(k for k, f in FAMILIES.items() if f.non_square)}")
        else:
            require(self.resolution >= 16 and self.resolution & (self.resolution - 1) == 0,
                    f"model.resolution: expected a power of two >= 16 (32, 64, 128) or [height, width], "
                    f"got {self.resolution}")
        require(self.z_dim >= 1, f"model.z_dim: expected >= 1, got {self.z_dim}")
        require(self.base_channels >= 1, f"model.base_channels: expected >= 1, got {self.base_channels}")
        require(0 <= self.d_dropout < 1, f"model.d_dropout: expected 0 <= p < 1, got {self.d_dropout}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        r = self.resolution
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))


@dataclass(kw_only=True)
class OptimConfig:
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


@dataclass(kw_only=True)
class GanEvalConfig:
    """Metrics computed during a GAN run (facegan.evaluate.PeriodicEval), reported like any scalar."""

    every_kimg: float = 0.0                # >0: evaluate every this many kimg (at ticks); 0: off (fastest)
    num_samples: int = 1000                # generated images per evaluation (over all ranks)
    num_real: int = 2000                   # at most this many real images per split (features cached)
    features: Literal["attr", "inception"] = "attr"   # attr -> fid_attr, ...; inception -> fid, ...
    classifier: str = ""                   # attribute classifier checkpoint (features: attr)
    inception_weights: str = ""            # local Inception-v3 weights file (features: inception)
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid", "precision_recall", "ms_ssim"])
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.every_kimg >= 0, f"eval.every_kimg: expected >= 0 (0: off), got {self.every_kimg}")
        require(self.num_samples >= 2, f"eval.num_samples: expected >= 2, got {self.num_samples}")
        require(self.num_real >= 2, f"eval.num_real: expected >= 2, got {self.num_real}")
        require(self.batch_size >= 1, f"eval.batch_size: expected >= 1, got {self.batch_size}")
        if self.every_kimg > 0:
            if self.features == "attr":
                require(bool(self.classifier), "eval.classifier: eval.every_kimg > 0 with features: attr needs "
                        "the attribute classifier's checkpoint (facegan classifier train ...)")
            else:
                require(bool(self.inception_weights), "eval.inception_weights: features: inception needs a local "
                        "Inception-v3 weights file")
        from facegan.metrics import METRICS

        unknown = [m for m in self.metrics if m not in METRICS]
        require(not unknown, f"eval.metrics: unknown {unknown}; known: {sorted(METRICS)}")


@dataclass(kw_only=True)
class CommonTrainConfig:
    """The `train` section's settings that every kind of run has (GAN and classifier runs)."""

    total_kimg: float = 100.0              # length of the run in thousands of images (over all ranks)
    tick_kimg: float = 4.0                 # report (and for GANs a sample grid) every tick
    checkpoint_kimg: float = 20.0          # checkpoint every this many kimg (and at the end)
    keep_checkpoints: int = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU
    deterministic: bool = False
    seed: int = 0
    max_bad_steps: int = 10                # stop after this many non-finite losses in a row
    num_threads: int = 0                   # torch threads per worker (0: leave torch's default)
    out_dir: str = "runs/default"
    resume: str = ""                       # "": fresh (or the runner's checkpoint), "latest", or a checkpoint dir
    max_minutes: float = 0.0               # >0: stop (with a checkpoint) at the first tick after this long

    def __post_init__(self) -> None:
        require(self.total_kimg > 0, f"train.total_kimg: expected > 0, got {self.total_kimg}")
        require(self.tick_kimg > 0, f"train.tick_kimg: expected > 0, got {self.tick_kimg}")
        require(self.checkpoint_kimg > 0, f"train.checkpoint_kimg: expected > 0, got {self.checkpoint_kimg}")
        require(self.keep_checkpoints >= 1, f"train.keep_checkpoints: expected >= 1, got {self.keep_checkpoints}")
        require(self.max_bad_steps >= 1, f"train.max_bad_steps: expected >= 1, got {self.max_bad_steps}")
        require(self.num_threads >= 0, f"train.num_threads: expected >= 0, got {self.num_threads}")
        require(self.max_minutes >= 0, f"train.max_minutes: expected >= 0 (0: no limit), got {self.max_minutes}")


@dataclass(kw_only=True)
class TrainConfig(CommonTrainConfig):
    """A GAN run's `train` section: the common settings plus G's EMA and the sample grid."""

    ema_kimg: float = 10.0                 # EMA half-life of G in kimg (0: no EMA)
    ema_rampup: float = 0.05               # StyleGAN2-ADA: half-life <= rampup * images seen
    grid_size: int = 64                    # fixed-latent sample grid

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ema_kimg >= 0, f"train.ema_kimg: expected >= 0, got {self.ema_kimg}")
        require(1 <= self.grid_size <= 256, f"train.grid_size: expected 1..256, got {self.grid_size}")


@dataclass(kw_only=True)
class RayConfig:
    num_workers: int = 2                   # training workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    backend: Literal["auto", "gloo", "nccl"] = "auto"     # auto: nccl with GPUs, gloo on CPU
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    storage_path: str = ""                 # Ray RunConfig storage (local path or URI); "" = out_dir/ray
    max_failures: int = 3
    address: str = ""                      # "" starts a local cluster; "auto" or host:port joins one

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, f"ray.num_workers: expected >= 1, got {self.num_workers}")
        require(self.cpus_per_worker > 0, f"ray.cpus_per_worker: expected > 0, got {self.cpus_per_worker}")
        require(self.gpus_per_worker > 0, f"ray.gpus_per_worker: expected > 0, got {self.gpus_per_worker}")
        require(self.max_failures >= -1, f"ray.max_failures: expected >= -1 (-1: unlimited), got {self.max_failures}")
        require(not (self.backend == "nccl" and not self.use_gpu), "ray.backend: nccl needs ray.use_gpu: true")


@dataclass(kw_only=True)
class WandbConfig:
    enabled: bool = True
    project: str = "facegan"
    entity: str = ""
    group: str = ""
    name: str = ""
    mode: Literal["auto", "offline", "online", "disabled"] = "auto"   # auto: online only with a key


@dataclass(kw_only=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # The family's own options (label smoothing, alpha/beta, ...): a mapping in YAML, validated
    # against FAMILIES[model.family].options into that dataclass, so a key another family has is
    # an error here rather than silently ignored.
    gan: Any = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: GanEvalConfig = field(default_factory=GanEvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        from facegan.models import FAMILIES

        options = FAMILIES[self.model.family].options
        if isinstance(self.gan, options):
            return
        require(isinstance(self.gan, dict),
                f"gan: expected a mapping of {self.model.family} options, got {self.gan!r}")
        try:
            self.gan = from_dict(options, self.gan, where="gan")
        except TypeError as exc:  # an options class without defaults for a missing key
            raise ConfigError(f"gan: {exc}") from None


# ===================================================================== classifier run configs
# An attribute-classifier run (facegan.classify.train_classifier) is one `ClassifierRunConfig`:
# the same data, train, ray and wandb sections as a GAN run, its own model, optim and eval.

@dataclass(kw_only=True)
class ClassifierModelConfig:
    arch: str = "report_cnn"               # facegan.models.CLASSIFIERS: report_cnn | resnet18
    resolution: int = 64                   # must match the shards
    dense_units: int | None = None         # report_cnn only (default 1024)
    dropout: float | None = None           # report_cnn only (default 0.3)
    attrs: list[str] = field(default_factory=list)   # attributes trained and scored; []: every
                                           # attribute whose train-split labels take both values

    def __post_init__(self) -> None:
        from facegan.models.classifier import CLASSIFIERS

        require(self.arch in CLASSIFIERS, f"model.arch: expected one of {sorted(CLASSIFIERS)}, got {self.arch!r}")
        require(self.resolution >= 16 and self.resolution & (self.resolution - 1) == 0,
                f"model.resolution: expected a power of two >= 16 (32, 64, 128), got {self.resolution}")
        if self.arch != "report_cnn":
            for name in ("dense_units", "dropout"):
                require(getattr(self, name) is None, f"model.{name}: only report_cnn has it, not {self.arch}")
        require(self.dense_units is None or self.dense_units >= 1,
                f"model.dense_units: expected >= 1, got {self.dense_units}")
        require(self.dropout is None or 0 <= self.dropout < 1, f"model.dropout: expected 0 <= p < 1, got {self.dropout}")
        dupes = sorted({a for a in self.attrs if self.attrs.count(a) > 1})
        require(not dupes, f"model.attrs: listed more than once: {', '.join(dupes)}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for CLASSIFIERS[arch] besides num_attrs."""
        kw: dict[str, Any] = {"resolution": self.resolution}
        if self.arch == "report_cnn":
            kw.update(dense_units=self.dense_units or 1024, dropout=0.3 if self.dropout is None else self.dropout)
        return kw


@dataclass(kw_only=True)
class ClassifierOptimConfig:
    lr: float = 1e-3                       # Adam
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        require(0 < self.lr < 1, f"optim.lr: expected 0 < lr < 1, got {self.lr}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            require(0 <= v < 1, f"optim.{name}: expected 0 <= beta < 1, got {v}")
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
        require(self.batch_size >= 1, f"eval.batch_size: expected >= 1, got {self.batch_size}")


@dataclass(kw_only=True)
class ClassifierRunConfig:
    data: DataConfig
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    optim: ClassifierOptimConfig = field(default_factory=ClassifierOptimConfig)
    train: CommonTrainConfig = field(default_factory=CommonTrainConfig)
    eval: ClassifierEvalConfig = field(default_factory=ClassifierEvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
