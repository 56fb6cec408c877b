"""One simulated two-node Ray cluster for the whole test session, kept on this machine.

    from conftest_ray import ray_cluster  # noqa: F401   (then take `ray_cluster` as a fixture)

Starting Ray Train workers costs ~15 s, so every test that needs Ray shares this cluster: a head
and one worker node of 1 CPU each (`ray.cluster_utils.Cluster`, both on this machine), so
STRICT_SPREAD puts one training worker on each node and a test can remove a whole node. The
session runs with `facegan.launch.cluster.offline_env` in a temporary HOME (bootstrap file, no
usage stats, W&B offline, no DNS) and a 0.2 s Train health-check interval, so reports are fast
and a checkpoint is registered soon after it is reported.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest

from facegan.launch.cluster import LOCAL_VARS, LOCALHOST, OFFLINE_VARS, offline_env

HEALTH_CHECK_INTERVAL_S = "0.2"
_SESSION: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def node_args() -> dict[str, Any]:
    """Arguments for `Cluster.add_node` of a 1-CPU worker node (also for replacement nodes)."""
    # No node_ip_address: nodes and this driver must agree on it, and ray.init works out its own.
    return {"num_cpus": 1}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's `ray.cluster_utils.Cluster` (head + one worker node), this process connected."""
    if "cluster" in _SESSION:  # the fixture imported into several test modules: still one cluster
        yield _SESSION["cluster"]
        return
    env = offline_env({"HOME": str(tmp_path_factory.mktemp("ray_home"))})
    patch = pytest.MonkeyPatch()
    # Ray's processes inherit these (GCS, raylets, dashboard, workers).
    for key in ("HOME", *OFFLINE_VARS, *LOCAL_VARS):
        patch.setenv(key, env[key])
    patch.setenv("RAY_AUTH_MODE", "disabled")
    patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)

    import ray
    from ray.cluster_utils import Cluster

    from facegan.launch.cluster import connect

    cluster = Cluster(initialize_head=True, head_node_args={
        **node_args(), "include_dashboard": True, "dashboard_host": LOCALHOST, "dashboard_port": free_port()})
    cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    connect(cluster.address)
    _SESSION["cluster"] = cluster
    try:
        yield cluster
    finally:
        _SESSION.pop("cluster", None)
        # After a long session ray.shutdown() was seen to block for good in the driver's disconnect
        # (like ray.cluster_resources mid-session): give it a bounded time, then kill the cluster.
        import threading

        closer = threading.Thread(target=ray.shutdown, daemon=True)
        closer.start()
        closer.join(60)
        cluster.shutdown()
        patch.undo()
