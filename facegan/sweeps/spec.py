"""Sweep definitions (`sweeps/*.yaml`): typed, validated, and expanded into trial configs. No Ray here.

    plan = load_sweep("sweeps/dcgan_lr_labels.yaml", overrides=["budget.max_trials=2"])
    plan.points                       # grid points (dim -> value), in order
    plan.trial_config(plan.points[0], trial_id="t0")   # a full RunConfig dict for one trial

A sweep file names a model family, a base run config (`configs/*.yaml`) plus overrides (`config`,
nested like a run config), a search space over dotted run-config keys, an objective (a metric the
loop reports at ticks, and min/max), a search algorithm (grid, random), a scheduler (fifo, asha,
pbt), resources per trial and a budget. Loading checks all of it before anything starts: unknown
keys, every grid value and both bounds of every range applied to the base config and validated by
`facegan.families.RunConfig`; the keys, metrics and optimizers of the family come from its
declaration in `facegan.families.FAMILIES` (no table here names a family).
`facegan.launch.tune` runs a plan on Ray Tune; `facegan.sweeps.report` renders its results.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facegan.config import MAX_KIMG, ConfigError, apply_overrides, from_dict, read_yaml, require, to_dict
from facegan.families import RunConfig, get_family

# Scalars every run reports at each tick (facegan.loop); each family adds its own (Family.metrics).
TICK_METRICS = ("kimg", "step", "images_seen", "img_per_sec", "bad_steps", "skipped_samples")
# Evaluation metrics the loop reports every eval.every_kimg (facegan.evaluation.periodic.PeriodicEval), by the
# entry of eval.metrics that computes them. Names carry the feature network: `fid` for Inception,
# `fid_attr` for the attribute classifier's features (eval.features: attr).
EVAL_METRICS: dict[str, str] = {"fid": "fid", "kid": "kid", "precision": "precision_recall",
                                "recall": "precision_recall", "ms_ssim": "ms_ssim"}


# What PBT may change in a running trial: a checkpoint taken with one value must fit the other.
PBT_MUTABLE_PREFIXES = ("optim.", "gan.")
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform")
# Run-config paths resolved against the directory `facegan sweep` runs in (trials run elsewhere).
LOCAL_PATH_KEYS = ("data.shards", "eval.classifier", "eval.inception_weights", "gan.classifier")
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(\s*/\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)?\s*$")
MAX_CHECKED_COMBINATIONS = 4096


def number(value: Any) -> Any:
    """YAML leaves '1e-4' and '1/15' as strings; sweep values are compared and plotted as numbers."""
    if isinstance(value, str) and _NUMBER.match(value):
        if "/" in value:
            num, den = value.split("/", 1)
            return float(num) / float(den)
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    return value


# ============================================================================ sweep file sections

@dataclass(kw_only=True)
class Dimension:
    """One search-space entry: exactly one of grid/choice (lists) or uniform/loguniform ([low, high]).

    also: other dotted keys that get the same value (e.g. one lr for optim.g_lr and optim.d_lr).
    sets: value -> {dotted key: value} set alongside it (e.g. a resolution and its shard set).
    """

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    also: list[str] = field(default_factory=list)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [k for k in DOMAIN_KINDS if getattr(self, k) is not None]
        require(len(given) == 1, f"expected exactly one of {', '.join(DOMAIN_KINDS)}, got {given or 'none'}")
        kind = given[0]
        if kind in ("grid", "choice"):
            values = [number(v) for v in getattr(self, kind)]
            require(len(values) >= 1, f"{kind}: expected at least one value")
            setattr(self, kind, values)
        else:
            bounds = getattr(self, kind)
            require(len(bounds) == 2, f"{kind}: expected [low, high], got {bounds}")
            low, high = (float(number(b)) for b in bounds)
            require(low < high, f"{kind}: expected low < high, got [{low}, {high}]")
            require(kind != "loguniform" or low > 0, f"loguniform: expected low > 0, got {low}")
            setattr(self, kind, [low, high])
        require(not self.sets or kind in ("grid", "choice"), "sets: only grid and choice values can set other keys")
        values = self.values if kind in ("grid", "choice") else []
        for raw in self.sets:
            require(number(raw) in values, f"sets: {raw!r} is not one of the values {values}")

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any]:
        """The finite values (grid, choice), or the two bounds (uniform, loguniform)."""
        return list(getattr(self, self.kind))

    @property
    def finite(self) -> bool:
        return self.kind in ("grid", "choice")

    def linked(self, value: Any) -> dict[str, Any]:
        """Dotted key -> value set alongside `value` (also + sets)."""
        out = {key: value for key in self.also}
        for raw, extra in self.sets.items():
            if number(raw) == value:
                out.update(extra)
        return out


@dataclass(kw_only=True)
class Objective:
    metric: str                               # a metric the loop reports at ticks
    mode: Literal["min", "max"]


@dataclass(kw_only=True)
class SearchConfig:
    algorithm: Literal["grid", "random"] = "grid"
    num_samples: int = 1                      # random: trials drawn; grid: repeats of the whole grid
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, f"search.num_samples: expected >= 1, got {self.num_samples}")


@dataclass(kw_only=True)
class SchedulerConfig:
    kind: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_kimg: float = 0.0                   # asha: no trial is stopped before this many kimg (0: one tick)
    reduction_factor: float = 2.0             # asha: keep 1/reduction_factor at each rung
    perturbation_kimg: float = 0.0            # pbt: exploit/explore every this many kimg
    burn_in_kimg: float = 0.0                 # pbt: no perturbation before this many kimg
    quantile_fraction: float = 0.25           # pbt: bottom fraction copies the top fraction
    resample_probability: float = 0.25        # pbt: resample from `mutations` instead of perturbing
    synch: bool = False                       # pbt: perturb all trials together (each waits for the slowest)
    mutations: dict[str, Dimension] = field(default_factory=dict)   # pbt: dotted key -> domain

    def __post_init__(self) -> None:
        require(self.grace_kimg >= 0, f"scheduler.grace_kimg: expected >= 0, got {self.grace_kimg}")
        require(self.reduction_factor > 1, f"scheduler.reduction_factor: expected > 1, got {self.reduction_factor}")
        require(self.perturbation_kimg >= 0, f"scheduler.perturbation_kimg: expected >= 0, got {self.perturbation_kimg}")
        require(self.burn_in_kimg >= 0, f"scheduler.burn_in_kimg: expected >= 0, got {self.burn_in_kimg}")
        require(0 < self.quantile_fraction <= 0.5,
                f"scheduler.quantile_fraction: expected 0 < q <= 0.5, got {self.quantile_fraction}")
        require(0 <= self.resample_probability <= 1,
                f"scheduler.resample_probability: expected 0..1, got {self.resample_probability}")
        if self.kind == "pbt":
            require(self.perturbation_kimg > 0, "scheduler.perturbation_kimg: pbt needs an interval > 0")
            require(bool(self.mutations), "scheduler.mutations: pbt needs at least one key to mutate")
        else:
            require(not self.mutations, f"scheduler.mutations: only pbt mutates, not {self.kind}")
            require(not self.synch, f"scheduler.synch: only pbt perturbs, not {self.kind}")
        for key in self.mutations:
            require(key.startswith(PBT_MUTABLE_PREFIXES),
                    f"scheduler.mutations.{key}: pbt can mutate only {', '.join(p + '*' for p in PBT_MUTABLE_PREFIXES)} "
                    "(a checkpoint must fit the mutated trial)")


@dataclass(kw_only=True)
class Resources:
    """Per trial: a TorchTrainer with `num_workers` workers (overrides the base config's `ray` section)."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    max_concurrent: int = 0                   # trials at once; 0: as many as the cluster fits

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, f"resources.num_workers: expected >= 1, got {self.num_workers}")
        require(self.cpus_per_worker > 0, f"resources.cpus_per_worker: expected > 0, got {self.cpus_per_worker}")
        require(self.gpus_per_worker > 0, f"resources.gpus_per_worker: expected > 0, got {self.gpus_per_worker}")
        require(self.max_concurrent >= 0, f"resources.max_concurrent: expected >= 0, got {self.max_concurrent}")


@dataclass(kw_only=True)
class Budget:
    max_minutes: float = 0.0                  # whole sweep (Tune time_budget_s); 0: no limit
    trial_kimg: float = 0.0                   # train.total_kimg of every trial; 0: the base config's
    max_trials: int = 0                       # 0: every grid point x num_samples / num_samples draws

    def __post_init__(self) -> None:
        require(self.max_minutes >= 0, f"budget.max_minutes: expected >= 0 (0: no limit), got {self.max_minutes}")
        require(0 <= self.trial_kimg <= MAX_KIMG,
                f"budget.trial_kimg: expected 0..{MAX_KIMG:,} (0: the base config's train.total_kimg), got {self.trial_kimg}")
        require(self.max_trials >= 0, f"budget.max_trials: expected >= 0 (0: all), got {self.max_trials}")


@dataclass(kw_only=True)
class SweepConfig:
    name: str
    family: str
    base: str                                 # run config YAML; relative: to the cwd, else to the repo root
    space: dict[str, Dimension]               # dotted run-config key -> domain
    objective: Objective
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)   # overrides of the base, nested like a run config
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: Resources = field(default_factory=Resources)
    budget: Budget = field(default_factory=Budget)
    out: str = ""                             # sweep folder; "": runs/sweeps/<name>

    def __post_init__(self) -> None:
        require(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)),
                f"name: expected letters, digits, '_', '-', '.', got {self.name!r}")
        require(bool(self.space), "space: expected at least one key to search over")
        require("://" not in self.out, f"out: expected a local (or mounted) folder, got {self.out!r}")
        if self.search.algorithm == "grid":
            ranges = [k for k, d in self.space.items() if not d.finite]
            require(not ranges, f"space.{ranges[0] if ranges else ''}: grid search needs grid or choice values, "
                                "not a range (use search.algorithm: random)")
        for key in self.scheduler.mutations:
            require(key in self.space, f"scheduler.mutations.{key}: not a key of space ({', '.join(self.space)})")


# ============================================================================ the plan

def _flatten_space(space: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys as written, or nested mappings (from `--set space.optim.g_lr.grid=[...]`)."""
    if not isinstance(space, dict):
        raise ConfigError(f"space{'.' + prefix if prefix else ''}: expected a mapping, got {space!r}")
    out: dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not (set(value) & set(DOMAIN_KINDS)):
            out.update(_flatten_space(value, name))
        else:
            out[name] = value
    return out


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_base(base: str, sweep_path: Path) -> Path:
    path = Path(base).expanduser()
    if path.is_absolute() or path.is_file():
        return path.resolve()
    for root in (sweep_path.resolve().parent.parent, sweep_path.resolve().parent):
        if (root / path).is_file():
            return (root / path).resolve()
    return path


@dataclass
class SweepPlan:
    """A validated sweep: the spec, the merged base run config, and the grid points (if grid)."""

    spec: SweepConfig
    path: str
    base: dict[str, Any]                      # base run config + `config` + resources/budget, paths absolute
    out_dir: str                              # absolute
    points: list[dict[str, Any]]              # grid: every trial's dim values, in order; random: []

    @property
    def num_trials(self) -> int:
        if self.spec.search.algorithm == "grid":
            return len(self.points)
        n = self.spec.search.num_samples
        return min(n, self.spec.budget.max_trials) if self.spec.budget.max_trials else n

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """Dotted key -> value for one trial's dim values (with `also` and `sets`)."""
        out: dict[str, Any] = {}
        for key, dim in self.spec.space.items():
            if key not in params:
                raise ConfigError(f"trial parameters lack space key {key!r}")
            value = number(params[key])
            out[key] = value
            out.update(dim.linked(value))
        return out

    def trial_config(self, params: dict[str, Any], *, trial_id: str, trial_name: str = "") -> dict[str, Any]:
        """The full run-config dict of one trial (out_dir and W&B group/name per trial)."""
        data = copy.deepcopy(self.base)
        for key, value in self.overrides(params).items():
            set_path(data, key, value)
        set_path(data, "train.out_dir", str(Path(self.out_dir) / "trials" / trial_id))
        set_path(data, "wandb.group", self.spec.name)
        set_path(data, "wandb.job_type", "sweep-trial")
        set_path(data, "wandb.name", trial_name or f"{self.spec.name}-{trial_id}")
        return data


def _base_config(spec: SweepConfig, sweep_path: Path) -> dict[str, Any]:
    base_path = _resolve_base(spec.base, sweep_path)
    data = read_yaml(base_path)
    data = deep_merge(data, spec.config)
    r, b = spec.resources, spec.budget
    set_path(data, "model.family", spec.family)
    for name in ("num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"):
        set_path(data, f"ray.{name}", getattr(r, name))
    if b.trial_kimg:
        set_path(data, "train.total_kimg", b.trial_kimg)
    # Workers and Tune trials run in other directories: local paths become absolute here.
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        value = data.get(section, {}).get(name) if isinstance(data.get(section), dict) else None
        if value:
            set_path(data, key, _local_path(value))
    return data


def _local_path(value: Any) -> Any:
    """A local path as an absolute one (URLs, pipes and non-strings as they are)."""
    if isinstance(value, str) and value and "://" not in value and not value.startswith("pipe:"):
        return str(Path(value).expanduser().resolve())
    return value


def _localize_space(spec: SweepConfig) -> None:
    """Path keys set by the space (a dimension's values, or its `sets`) made absolute, as the base's
    are: Tune runs each trial in a directory of its own."""
    for key, dim in spec.space.items():
        if key in LOCAL_PATH_KEYS and dim.finite:
            setattr(dim, dim.kind, [_local_path(v) for v in dim.values])
        for extra in dim.sets.values():
            for linked in [k for k in extra if k in LOCAL_PATH_KEYS]:
                extra[linked] = _local_path(extra[linked])


def corner_points(dims: dict[str, Dimension]) -> list[dict[str, Any]]:
    """Every value of finite dims x both bounds of ranges; one-at-a-time beyond a cap."""
    keys = list(dims)
    total = math.prod(len(d.values) for d in dims.values())
    if total <= MAX_CHECKED_COMBINATIONS:
        return [dict(zip(keys, combo)) for combo in itertools.product(*(dims[k].values for k in keys))]
    first = {k: d.values[0] for k, d in dims.items()}
    return [dict(first, **{k: v}) for k, d in dims.items() for v in d.values]


def _validate_trial(plan: SweepPlan, params: dict[str, Any], where: str) -> None:
    data = copy.deepcopy(plan.base)
    for key, value in plan.overrides(params).items():
        set_path(data, key, value)     # an unknown key: from_dict names it and lists the valid ones
    try:
        from_dict(RunConfig, data)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"{where}{shown}: {exc}") from None


def _validate_objective(spec: SweepConfig, base: dict[str, Any]) -> None:
    metric = spec.objective.metric
    family = get_family(spec.family, where="family")
    if metric in family.metrics or metric in TICK_METRICS:
        return
    name, _, features = metric.partition("_")
    if family.generator is not None and (metric in EVAL_METRICS or (features == "attr" and name in EVAL_METRICS)):
        features = features or "inception"
        ev = base.get("eval", {})
        require(float(number(ev.get("every_kimg", 0))) > 0,
                f"objective.metric: {metric} is reported only every eval.every_kimg; set eval.every_kimg > 0 "
                "in the sweep's config")
        require(ev.get("features", "attr") == features,
                f"objective.metric: {metric} needs eval.features: {features}, got {ev.get('features', 'attr')}")
        # Tune's schedulers need the objective in every report: evaluate at every tick.
        tick = float(number(base.get("train", {}).get("tick_kimg", 4.0)))
        require(float(number(ev.get("every_kimg", 0))) <= tick,
                f"objective.metric: {metric} must be in every report (Tune's schedulers compare them), so "
                f"eval.every_kimg must be <= train.tick_kimg={tick:g}, got {ev.get('every_kimg')}")
        listed = ev.get("metrics")
        require(listed is None or EVAL_METRICS[name] in listed,
                f"objective.metric: {metric} needs {EVAL_METRICS[name]} in eval.metrics, got {listed}")
        return
    known = sorted(set(family.metrics) | set(TICK_METRICS))
    evals = sorted(EVAL_METRICS) + sorted(f"{m}_attr" for m in EVAL_METRICS) if family.generator else []
    raise ConfigError(f"objective.metric: {spec.family} does not report {metric!r} (tick metrics: {', '.join(known)}"
                      + (f"; with an eval section: {', '.join(evals)})" if evals else ")"))


def validate(plan: SweepPlan) -> None:
    """Every check that needs no Ray. Raises ConfigError naming the file and the field."""
    spec = plan.spec
    _validate_objective(spec, plan.base)
    where = f"{plan.path}: space "
    for params in corner_points(spec.space):
        _validate_trial(plan, params, where)
    for key, dim in spec.scheduler.mutations.items():
        first = {k: d.values[0] for k, d in spec.space.items()}
        for value in dim.values:
            _validate_trial(plan, dict(first, **{key: value}), f"{plan.path}: scheduler.mutations ")
    base_cfg = from_dict(RunConfig, plan.base)
    sc, total = spec.scheduler, base_cfg.train.total_kimg
    if sc.kind == "asha":
        require(sc.grace_kimg < total, f"scheduler.grace_kimg: expected < the trial length "
                                       f"train.total_kimg={total:g}, got {sc.grace_kimg:g}")
    if sc.kind == "pbt":
        require(sc.perturbation_kimg < total, f"scheduler.perturbation_kimg: expected < the trial length "
                                              f"train.total_kimg={total:g}, got {sc.perturbation_kimg:g}")
        require(spec.search.num_samples >= 2 or len(plan.points) >= 2,
                "search: pbt needs a population of at least 2 trials")
        # Exploit copies the donor's latest checkpoint: it should be from this interval.
        require(base_cfg.train.checkpoint_kimg <= sc.perturbation_kimg,
                f"train.checkpoint_kimg: pbt needs a checkpoint every perturbation "
                f"(<= scheduler.perturbation_kimg={sc.perturbation_kimg:g}), got {base_cfg.train.checkpoint_kimg:g}")


def load_sweep(path: str | Path, *, overrides: list[str] | None = None) -> SweepPlan:
    """Read, merge `--set` overrides into, and validate a sweep file."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    if "space" in data:
        data["space"] = _flatten_space(data["space"])
    sched = data.get("scheduler")
    if isinstance(sched, dict) and isinstance(sched.get("mutations"), dict):
        data["scheduler"] = dict(sched, mutations=_flatten_space(sched["mutations"]))
    try:
        spec = from_dict(SweepConfig, data)
        base = _base_config(spec, path)
        _localize_space(spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out_dir = str(Path(spec.out or f"runs/sweeps/{spec.name}").expanduser().resolve())
    points: list[dict[str, Any]] = []
    if spec.search.algorithm == "grid":
        keys = list(spec.space)
        grid = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.space[k].values for k in keys))]
        points = grid * spec.search.num_samples
        if spec.budget.max_trials:
            points = points[:spec.budget.max_trials]
    plan = SweepPlan(spec=spec, path=str(path), base=base, out_dir=out_dir, points=points)
    try:
        validate(plan)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    return plan


def spec_dict(plan: SweepPlan) -> dict[str, Any]:
    """JSON-safe description of the plan, written next to the results (the report reads it)."""
    return {"path": plan.path, "spec": to_dict(plan.spec), "base": plan.base, "out_dir": plan.out_dir,
            "points": plan.points, "num_trials": plan.num_trials}
