"""Hyperparameter sweeps: the sweep file (`spec`: typed, validated, expanded into trial configs;
no Ray) and its HTML report (`report`). facegan.launch.tune runs a plan on Ray Tune.

    plan = load_sweep("sweeps/dcgan_lr_labels.yaml", overrides=["budget.max_trials=2"])
"""

from facegan.sweeps.spec import SweepPlan, load_sweep

__all__ = ["SweepPlan", "load_sweep"]
