"""One simulated two-node Ray cluster per test session, kept on this machine.

A test takes the `ray_cluster` fixture (conftest.py provides it). Starting Ray Train workers costs ~15 s, so every test that needs Ray shares this cluster: a head
and one worker node of 1 CPU each (`ray.cluster_utils.Cluster`, both on this machine), so
STRICT_SPREAD puts one training worker on each node and a test can remove a whole node. The
session runs with `facegan.launch.cluster.offline_env` in a temporary HOME (bootstrap file, no
usage stats, W&B offline, no DNS) and a 0.2 s Train health-check interval, so reports are fast
and a checkpoint is registered soon after it is reported.
"""

from __future__ import annotations

import atexit
import socket
import threading
import time
import warnings
from typing import Any, Iterator

import pytest

from facegan.launch.cluster import LOCAL_VARS, LOCALHOST, OFFLINE_VARS, offline_env

HEALTH_CHECK_INTERVAL_S = "0.2"
SHUTDOWN_TIMEOUT_S = 60
_SESSION: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def node_args() -> dict[str, Any]:
    """Arguments for `Cluster.add_node` of a 1-CPU worker node (also for replacement nodes)."""
    # No node_ip_address: nodes and this driver must agree on it, and ray.init works out its own.
    return {"num_cpus": 1}


def start_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start the session cluster (once) and connect this process to it."""
    if "cluster" in _SESSION:
        return _SESSION["cluster"]
    env = offline_env({"HOME": str(tmp_path_factory.mktemp("ray_home"))})
    patch = pytest.MonkeyPatch()
    # Ray's processes inherit these (GCS, raylets, dashboard, workers).
    for key in ("HOME", *OFFLINE_VARS, *LOCAL_VARS):
        patch.setenv(key, env[key])
    patch.setenv("RAY_AUTH_MODE", "disabled")
    patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)

    from ray.cluster_utils import Cluster

    from facegan.launch.cluster import connect

    cluster = Cluster(initialize_head=True, head_node_args={
        **node_args(), "include_dashboard": True, "dashboard_host": LOCALHOST, "dashboard_port": free_port()})
    cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    connect(cluster.address)
    _SESSION.update(cluster=cluster, patch=patch)
    return cluster


def stop_cluster() -> None:
    """Disconnect and stop the session cluster (no-op when none is up). Never blocks for long.

    In long sessions whose driver sat idle for many minutes, `ray.shutdown()` was seen to block
    for good in the driver's disconnect: it gets SHUTDOWN_TIMEOUT_S, then the cluster's processes
    are killed and `driver_wedged` is set, so the session ends with os._exit (see conftest.py)
    instead of hanging in Ray's atexit handler.
    """
    cluster = _SESSION.pop("cluster", None)
    if cluster is None:
        return
    import ray

    worker = ray._private.worker.global_worker
    listener = getattr(worker, "listener_thread", None)
    if listener is not None and not listener.is_alive() and hasattr(worker, "gcs_error_subscriber"):
        # Seen in CI: the driver's error-listener thread had ended (its GCS poll failed), and then
        # ray.shutdown() blocked for good closing that listener's subscriber. Skip the close.
        warnings.warn("the Ray driver's error listener thread had stopped; not closing its subscriber")
        _SESSION["orphan_subscriber"] = worker.gcs_error_subscriber  # kept alive: no close in a destructor
        del worker.gcs_error_subscriber
    closer = threading.Thread(target=ray.shutdown, daemon=True, name="ray-shutdown")
    closer.start()
    closer.join(SHUTDOWN_TIMEOUT_S)
    if closer.is_alive():
        _SESSION["driver_wedged"] = True
        atexit.unregister(ray.shutdown)
        warnings.warn(f"ray.shutdown() did not return within {SHUTDOWN_TIMEOUT_S} s; "
                      "killing the session cluster's processes")
        for node in cluster.list_all_nodes():
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    else:
        cluster.shutdown()
    _SESSION.pop("patch").undo()


def wait_for_free_cpus(timeout_s: float = 60.0) -> bool:
    """Wait until every CPU of the session cluster is free again (the previous test's Train
    workers are torn down asynchronously, after its `fit` returned); False on timeout. A test
    that asserts where Ray put its tasks (SPREAD is best effort: a node whose CPU is still held
    gets none) calls this first."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        total = ray.cluster_resources().get("CPU", 0.0)
        if ray.available_resources().get("CPU", 0.0) >= total > 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def wait_until_spread_reaches(nodes: set[str], timeout_s: float = 60.0) -> bool:
    """Wait until SPREAD tasks from this driver land on every node in `nodes`; False on timeout.
    The driver's raylet schedules from its own view of the cluster, which learns of a node (and
    of its freed CPU) a moment after the GCS does: seen once on a fresh cluster, where every shard
    task of the build that followed went to the head node."""
    import ray

    def node_of_task() -> str:   # nested: pickled by value (workers cannot import this module)
        time.sleep(0.05)           # long enough that one worker cannot take every probe
        return ray.get_runtime_context().get_node_id()

    probe = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(node_of_task)
    deadline = time.monotonic() + timeout_s
    while True:
        if set(ray.get([probe.remote() for _ in range(2 * len(nodes))])) >= nodes:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def driver_wedged() -> bool:
    return bool(_SESSION.get("driver_wedged"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's `ray.cluster_utils.Cluster` (head + one worker node), this process connected.

    conftest.py runs the tests that take this fixture first and stops the cluster right after the
    last of them (an idle driver connection is what went bad in long sessions); this teardown is
    the fallback for runs that end early."""
    yield start_cluster(tmp_path_factory)
    stop_cluster()
