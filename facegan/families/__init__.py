"""The model families a run can name (`model.family`), and the run config they type.

    from facegan.families import FAMILIES, RunConfig
    cfg = load_yaml(RunConfig, "configs/wgangp_celeba64.yaml")   # model/optim/gan/train/eval typed by the family
    family = FAMILIES[cfg.model.family]                        # a facegan.families.base.Family

Adding a family: a folder `facegan/families/<name>/` (its `__init__.py` declares options and a
`Family` subclass as `FAMILY`, without importing torch; `nets.py`; `steps.py`) and its name in
`PACKAGES` below: that is the one edit. Nothing else names families: the loop runs
`family.phases(cfg)`, checkpoints hold `family.build_nets`'s nets and `family.optimizers`' Adams,
sweeps read `family.metrics` and `option_keys(family)`, Tune sets a resumed trial's optimizers
from `family.optimizers(cfg)` of its own config, the CLI reads the capabilities (`takes_attrs`,
`generator`, ...). README.md's family table lists the same names (tests/test_readme.py checks).

This module and every family's `__init__` import no torch: a run config validates without it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from facegan.config import AugmentConfig, ConfigError, DataConfig, RayConfig, WandbConfig, apply_overrides, from_dict, read_yaml, require
from facegan.families.base import (DataInfo, Family, OptimizerSpec, Phase, option_keys,  # noqa: F401 (API)
                                   section_fields)

# The registry: each name is a package facegan/families/<name>/ whose FAMILY is named so.
PACKAGES = ("dcgan", "overlay", "conditional", "classifier", "wgangp", "vae", "infogan", "began", "infobegan",
            "predictor", "progressive", "sngan")


def _register(packages: tuple[str, ...]) -> dict[str, Family]:
    found: dict[str, Family] = {}
    for package in packages:
        family = importlib.import_module(f"{__name__}.{package}").FAMILY
        if not isinstance(family, Family) or family.name != package:
            raise TypeError(f"facegan/families/{package}/__init__.py: FAMILY must be a Family named {package!r}, "
                            f"got {family!r}")
        found[package] = family
    return found


FAMILIES: dict[str, Family] = _register(PACKAGES)


def get_family(name: Any, *, where: str = "model.family") -> Family:
    """FAMILIES[name], or ConfigError listing the families."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(f"{where}: expected one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


@dataclass(kw_only=True)
class RunConfig:
    """One training run (`configs/*.yaml`, a sweep trial). `model.family` (default dcgan) picks the
    family; its `model`, `optim`, `gan`, `train` and `eval` sections are validated into that
    family's dataclasses, so a key another family has is an error, not silently ignored.
    `augment` (facegan.augpipe) must be a kind the family takes (Family.augment_kinds)."""

    data: DataConfig
    model: Any = field(default_factory=dict)
    optim: Any = field(default_factory=dict)
    gan: Any = field(default_factory=dict)
    train: Any = field(default_factory=dict)
    eval: Any = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        name = self.model.get("family", "dcgan") if isinstance(self.model, dict) else getattr(self.model, "family", None)
        family = get_family(name)
        for section, cls in section_fields(family).items():
            value = getattr(self, section)
            if isinstance(value, cls):
                continue
            require(isinstance(value, dict),
                    f"{section}: expected a mapping of {family.name} {section} options, got {value!r}")
            if section == "model":
                value = dict(value, family=family.name)
            try:
                setattr(self, section, from_dict(cls, value, where=section))
            except TypeError as exc:  # an options class without defaults for a missing key
                raise ConfigError(f"{section}: {exc}") from None
        if self.augment.kind not in family.augment_kinds:
            raise ConfigError(f"augment.kind: {self.augment.kind} is not available for the {family.name} family "
                              f"({family.augment_note}); it takes: {', '.join(family.augment_kinds)}")
        family.validate(self)

    @property
    def family(self) -> Family:
        return FAMILIES[self.model.family]


def run_config_keys(family: Family) -> set[str]:
    """Every dotted key a run config of `family` has (section.field)."""
    keys = option_keys(family)
    for f in dataclasses.fields(RunConfig):
        if f.name not in section_fields(family) and f.name != "model":
            cls = {"data": DataConfig, "augment": AugmentConfig, "ray": RayConfig, "wandb": WandbConfig}[f.name]
            keys |= {f"{f.name}.{g.name}" for g in dataclasses.fields(cls)}
    return keys


def load_run_config(path: str, overrides: list[str], *, default_family: str = "") -> RunConfig:
    """RunConfig from YAML + --set overrides; every error names the file and field. With
    `default_family`, a config without model.family is that family's (classifier configs), and
    one naming another family is refused."""
    data = apply_overrides(read_yaml(path), overrides)
    if default_family:
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        family = model.get("family", default_family)
        if family != default_family:
            raise ConfigError(f"{path}: model.family is {family!r}; this command trains {default_family} runs "
                              f"(use `facegan train` for other families)")
        data["model"] = dict(model, family=default_family)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
