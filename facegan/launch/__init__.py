"""The only Ray code in facegan: Ray Train runs of the loop, and clusters that stay on this machine.

    from facegan.launch import run_training            # facegan.launch.trainer
    metrics = run_training(cfg, config_dict=to_dict(cfg))["metrics"]
    python -m facegan.launch.cluster up|status|down    # facegan.launch.cluster (make ray-up / ray-down)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"run_training": "facegan.launch.trainer", "offline_env": "facegan.launch.cluster",
            "start_local_cluster": "facegan.launch.cluster", "connect": "facegan.launch.cluster",
            "ensure_ray": "facegan.launch.cluster"}


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m facegan.launch.cluster` neither imports torch nor runs its module twice.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'facegan.launch' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
