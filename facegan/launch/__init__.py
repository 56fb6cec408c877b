"""The only Ray code in facegan: Ray Train runs of the loop, and clusters that stay on this machine.

    from facegan.launch import run_training
    metrics = run_training(cfg, config_dict=to_dict(cfg))
"""

from facegan.launch.cluster import connect, ensure_ray, offline_env, start_local_cluster
from facegan.launch.trainer import run_training

__all__ = ["connect", "ensure_ray", "offline_env", "run_training", "start_local_cluster"]
