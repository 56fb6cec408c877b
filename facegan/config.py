"""Typed, validated configuration: YAML/dicts load into dataclasses, unknown keys are errors.

Every config section is a keyword-only dataclass that validates itself in `__post_init__`
(raising `ConfigError` naming the field and the allowed range). `from_dict` turns a plain dict
(from YAML) into such a dataclass, recursing into nested sections; `apply_overrides` applies
`--set a.b=value` style overrides before validation so a bad override fails early too.

    recipe = load_yaml(ShardRecipe, "shards/celeba64.yaml", overrides=["resolution=128"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from facegan.errors import ConfigError

T = TypeVar("T")




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
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = _parse_number(value)
            except (ValueError, OverflowError):
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):   # inf/nan would pass `> 0` checks and overflow later (kimg -> steps)
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
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
        if float(den) == 0:
            raise ValueError(f"{text!r}: division by zero")
        return float(num) / float(den)
    return float(text)


def _admits_none(tp: Any) -> bool:
    return tp is Any or (get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp))


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
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(prefix + k for k in missing)}"
                          f" (required{' in ' + where if where else ''})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if value is None and not _admits_none(hints[name]):
            # A blank YAML value (`out_dir:`) means "the default", never the string "None".
            f = fields[name]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: expected a value, got nothing (null)")
            continue
        kwargs[name] = _coerce(value, hints[name], key)
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
        try:
            # Blank (`--set train.out_dir=`) means the default, as a blank YAML value does.
            value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else None
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({' '.join(str(exc).split())[:120]})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue   # an unhashable key: construct_mapping's own error says so
            if first is not key_node.start_mark:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice in one mapping "
                                  f"(first on line {first.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError for impossible dates (2021-02-30)
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
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


# ============================================================================ run-config sections
# A training run is one `facegan.families.RunConfig`: its data, ray and wandb sections are the
# ones below; its model, optim, gan, train and eval sections are the dataclasses its family
# declares (facegan.families), most of them the generic ones below. Every section validates itself,
# so a bad value fails before any Ray job starts, and none of this imports torch.

# The metrics facegan.metrics registers (a test checks the two agree): eval.metrics names them.
METRIC_NAMES = ("fid", "kid", "precision_recall", "ms_ssim", "memorisation", "d_accuracy", "identity_diversity",
                "face_detection")

@dataclass(kw_only=True)
class DataConfig:
    shards: str = ""                       # shard set location (folder, fsspec URL)
    batch_size: int = 64                   # per training worker
    num_workers: int = 2                   # loader processes per training worker
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        require(bool(self.shards), "data.shards: expected the location of a shard set built by `facegan shards build`")
        require(1 <= self.batch_size <= 65536, f"data.batch_size: expected 1..65536, got {self.batch_size}")
        require(0 <= self.num_workers <= 64, f"data.num_workers: expected 0..64, got {self.num_workers}")
        require(self.shuffle_buffer >= 0, f"data.shuffle_buffer: expected >= 0, got {self.shuffle_buffer}")


@dataclass(kw_only=True)
class GanEvalConfig:
    """Metrics computed during a GAN run (facegan.evaluation.periodic.PeriodicEval), reported like any scalar."""

    every_kimg: float = 0.0                # >0: evaluate every this many kimg (at ticks); 0: off (fastest)
    num_samples: int = 1000                # generated images per evaluation (over all ranks)
    num_real: int = 2000                   # at most this many real images per split (features cached)
    features: Literal["attr", "inception", "face"] = "attr"   # attr -> fid_attr, ...; inception -> fid, ...; face -> fid_face
    face: bool = False                     # also dlib face-identity metrics (fid_face, identity_diversity, ...)
    classifier: str = ""                   # attribute classifier checkpoint (features: attr)
    inception_weights: str = ""            # local Inception-v3 weights file (features: inception)
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid", "precision_recall", "ms_ssim"])
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.every_kimg >= 0, f"eval.every_kimg: expected >= 0 (0: off), got {self.every_kimg}")
        require(10 <= self.num_samples <= 1_000_000, f"eval.num_samples: expected 10..1000000, got {self.num_samples}")
        require(10 <= self.num_real <= 1_000_000, f"eval.num_real: expected 10..1000000, got {self.num_real}")
        require(self.batch_size >= 1, f"eval.batch_size: expected >= 1, got {self.batch_size}")
        if self.every_kimg > 0:
            if self.features == "attr":
                require(bool(self.classifier), "eval.classifier: eval.every_kimg > 0 with features: attr needs "
                        "the attribute classifier's checkpoint (facegan classifier train ...)")
            elif self.features == "inception":
                require(bool(self.inception_weights), "eval.inception_weights: features: inception needs a local "
                        "Inception-v3 weights file")
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        require(not unknown, f"eval.metrics: unknown {unknown}; known: {sorted(METRIC_NAMES)}")


# torch threads per process: far above any machine's cores (each thread reserves its stack and
# libgomp's per-thread state; 100000 of them exhaust memory before the run starts).
MAX_THREADS = 1024
MAX_KIMG = 1_000_000   # 10^9 images: 40x StyleGAN2's longest FFHQ run; more is a typo (or inf)


@dataclass(kw_only=True)
class CommonTrainConfig:
    """The `train` section's settings that every kind of run has (GAN and classifier runs)."""

    total_kimg: float = 100.0              # length of the run in thousands of images (over all ranks)
    tick_kimg: float = 4.0                 # report (and for GANs a sample grid) every tick
    checkpoint_kimg: float = 20.0          # checkpoint every this many kimg (and at the end)
    keep_checkpoints: int = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Autocast (facegan.runtime.resolve_precision). auto: bf16 on CUDA (fp16 where the GPU has no
    # bf16); on CPU bf16 where the CPU has bf16 units (AVX512-BF16/AMX) and the family has not opted
    # out (Family.cpu_bf16), else fp32. bf16 on CPU is honoured; fp16 on CPU falls back to fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False                  # torch.compile the training nets (in place: checkpoints unchanged)
    # Nets and batches in channels_last memory format; auto: on for CPU runs computing in bf16.
    channels_last: bool | Literal["auto"] = "auto"
    # Fused Adam kernels (CPU and CUDA): faster, and they take the step's finiteness flag as a device
    # tensor, so the loop skips a non-finite step without a host sync; false: torch's default Adam
    # and one host sync per phase for the check.
    fused_adam: bool = True
    deterministic: bool = False
    seed: int = 0
    max_bad_steps: int = 10                # stop after this many non-finite losses in a row
    num_threads: int = 0                   # torch threads per worker (0: leave torch's default)
    out_dir: str = "runs/default"
    resume: str = ""                       # "": fresh (or the runner's checkpoint), "latest", or a checkpoint dir
    max_minutes: float = 0.0               # >0: stop (with a checkpoint) at the first tick after this long

    def __post_init__(self) -> None:
        require(0 < self.total_kimg <= MAX_KIMG, f"train.total_kimg: expected 0 < kimg <= {MAX_KIMG:,}, got {self.total_kimg}")
        require(self.tick_kimg > 0, f"train.tick_kimg: expected > 0, got {self.tick_kimg}")
        require(self.checkpoint_kimg > 0, f"train.checkpoint_kimg: expected > 0, got {self.checkpoint_kimg}")
        require(self.keep_checkpoints >= 1, f"train.keep_checkpoints: expected >= 1, got {self.keep_checkpoints}")
        require(self.max_bad_steps >= 1, f"train.max_bad_steps: expected >= 1, got {self.max_bad_steps}")
        require(0 <= self.num_threads <= MAX_THREADS,
                f"train.num_threads: expected 0..{MAX_THREADS} (0: torch's default), got {self.num_threads}")
        require(bool(str(self.out_dir).strip()), "train.out_dir: expected a folder, got an empty string")
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
    # Seconds a rank may wait on another before the group counts as hung and restarts from the last
    # checkpoint: torch collectives (the process group's timeout), Ray Train's report barrier, and a
    # worker that stops answering Ray's health check (a frozen process). Must exceed rank 0's longest
    # stretch alone: writing and uploading a checkpoint, scoring a periodic eval, grids and videos.
    collective_timeout_s: int = 300
    # DistributedDataParallel's gradient buckets (Ray's prepare_model and the in-process wrap alike):
    # bucket size in MiB (null: DDP's default, 25), and gradients as views into the buckets (no copy
    # between them, less memory).
    ddp_bucket_cap_mb: float | None = None
    ddp_gradient_as_bucket_view: bool = False

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, f"ray.num_workers: expected >= 1, got {self.num_workers}")
        require(self.cpus_per_worker > 0, f"ray.cpus_per_worker: expected > 0, got {self.cpus_per_worker}")
        require(self.gpus_per_worker > 0, f"ray.gpus_per_worker: expected > 0, got {self.gpus_per_worker}")
        require(self.max_failures >= -1, f"ray.max_failures: expected >= -1 (-1: unlimited), got {self.max_failures}")
        require(not (self.backend == "nccl" and not self.use_gpu), "ray.backend: nccl needs ray.use_gpu: true")
        require(10 <= self.collective_timeout_s <= 86400,
                f"ray.collective_timeout_s: expected 10..86400 seconds, got {self.collective_timeout_s}")
        require(self.ddp_bucket_cap_mb is None or 0 < self.ddp_bucket_cap_mb <= 1024,
                f"ray.ddp_bucket_cap_mb: expected 0 < MiB <= 1024 (null: DDP's default 25), got {self.ddp_bucket_cap_mb}")

    def ddp_options(self) -> dict[str, Any]:
        """The DistributedDataParallel keyword arguments this section sets (none at DDP's defaults)."""
        options: dict[str, Any] = {}
        if self.ddp_bucket_cap_mb is not None:
            options["bucket_cap_mb"] = self.ddp_bucket_cap_mb
        if self.ddp_gradient_as_bucket_view:
            options["gradient_as_bucket_view"] = True
        return options


# The augmentation pipe's operations (facegan.augpipe): DiffAugment's three (Zhao et al. 2020) and
# ADA's horizontal flip (Karras et al. 2020).
AUGMENT_OPS = ("color", "translation", "cutout", "xflip")
AUGMENT_DEFAULT_POLICY = {"diffaugment": ["color", "translation", "cutout"], "ada": ["xflip", "translation", "color"]}


@dataclass(kw_only=True)
class AugmentConfig:
    """`augment:` of a run: what every image D sees goes through (real, fake, interpolates), in the
    D and the G phases (facegan.augpipe). kind none: nothing (the default; no random draws).

    diffaugment: DiffAugment (Zhao et al. 2020): every op of `policy` on every sample, every time.
    ada: each op of `policy` applied per sample with probability p (ADA, Karras et al. 2020); with
         `adaptive`, p starts at `p` and moves by sign(r_t - target) * images / (speed_kimg * 1000)
         every `interval` steps, r_t = E[sign D(x_real)] over those steps and all ranks; else p is fixed.
    """

    kind: Literal["none", "diffaugment", "ada"] = "none"
    policy: list[str] = field(default_factory=list)   # ops in order; []: the kind's default
    p: float = 0.0                         # ada: the initial (adaptive) or fixed probability, [0, 1]
    adaptive: bool = True                  # ada: adjust p from the overfitting heuristic r_t
    target: float = 0.6                    # ada: the r_t that p is steered to, (0, 1)
    speed_kimg: float = 500.0              # ada: p can go from 0 to 1 in this many kimg, > 0
    interval: int = 4                      # ada: steps between adjustments, 1..10000

    def __post_init__(self) -> None:
        if self.kind == "none":
            require(not self.policy, f"augment.policy: kind none applies no ops, got {self.policy} (set augment.kind: "
                                     "diffaugment or ada)")
        unknown = [op for op in self.policy if op not in AUGMENT_OPS]
        require(not unknown, f"augment.policy: unknown ops {unknown}; known: {list(AUGMENT_OPS)}")
        require(len(set(self.policy)) == len(self.policy), f"augment.policy: an op is listed twice: {self.policy}")
        if self.kind != "none" and not self.policy:
            self.policy = list(AUGMENT_DEFAULT_POLICY[self.kind])
        require(0.0 <= self.p <= 1.0, f"augment.p: expected a probability in [0, 1], got {self.p}")
        require(self.kind == "ada" or self.p == 0.0,
                f"augment.p: only kind ada has a probability (diffaugment applies every op), got {self.p}")
        require(0.0 < self.target < 1.0, f"augment.target: expected 0 < r_t target < 1, got {self.target}")
        require(self.speed_kimg > 0, f"augment.speed_kimg: expected > 0, got {self.speed_kimg}")
        require(1 <= self.interval <= 10000, f"augment.interval: expected 1..10000 steps, got {self.interval}")
        require(self.kind != "ada" or self.adaptive or self.p > 0,
                "augment.p: kind ada with adaptive: false and p 0 augments nothing; set p > 0 (or kind: none)")


@dataclass(kw_only=True)
class WandbConfig:
    enabled: bool = True
    project: str = "facegan"
    entity: str = ""
    group: str = ""
    name: str = ""
    mode: Literal["auto", "offline", "online", "disabled"] = "auto"   # auto: online only with a key
    # online: WANDB_API_KEY, or the key `wandb login` stored in ~/.netrc
    job_type: Literal["train", "sweep-trial", "eval"] = "train"   # sweeps set sweep-trial
    tags: list[str] = field(default_factory=list)   # besides the family and (in a sweep) the sweep's name
    log_checkpoints: bool = False          # upload the last checkpoint as a "model" artifact at the end
