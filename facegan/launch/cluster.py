"""Ray clusters that keep every byte on this machine: local starts, connections, `make ray-up/down`.

    python -m facegan.launch.cluster up      # head node: token auth, job server on 127.0.0.1
    python -m facegan.launch.cluster status
    python -m facegan.launch.cluster down    # stops only the head that `up` started
    FACEGAN_RAY_PORT=6390 FACEGAN_RAY_DASHBOARD_PORT=8290 make ray-up   # other ports (also for down)

Nothing a local facegan Ray cluster runs may send traffic off the machine (`offline_env`):
Ray's usage-stats reporter is switched off and pointed at a closed loopback port; Ray's dashboard
probes the cloud-metadata endpoints (169.254.169.254, metadata.google.internal) unless
`$HOME/ray_bootstrap_config.yaml` exists, so a minimal one is written (never over one a cluster
launcher left); W&B runs offline unless the user set an API key (which never enters a runtime_env, see
`runtime_env_vars`); and the resolver makes no DNS
queries, because torch's c10d rendezvous reverse-resolves every peer. Servers bind to 127.0.0.1
where Ray lets us choose (dashboard, job server); Ray names a node by this machine's own address.
When joining a real cluster only the usage-stats and W&B mode settings and JOB_VARS are passed on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

LOCALHOST = "127.0.0.1"
BOOTSTRAP_FILE = "ray_bootstrap_config.yaml"
BOOTSTRAP_TEXT = ("# Written by facegan.launch.cluster: its presence stops Ray's dashboard from probing\n"
                  "# cloud-metadata endpoints. A cluster launcher's own file is never overwritten.\n"
                  "provider: {type: local}\n")
# Variables every process of a facegan Ray run needs (drivers, Train workers, job entrypoints).
OFFLINE_VARS = ("RAY_USAGE_STATS_ENABLED", "RAY_USAGE_STATS_REPORT_URL", "WANDB_MODE")
# Extra variables for clusters that live entirely on this machine; never pushed to a real cluster.
LOCAL_VARS = {
    # torch's TCPStore reverse-resolves each peer, a v4-mapped IPv6 address that /etc/hosts cannot
    # answer, so the lookup would go to the DNS server. With zero attempts the resolver sends
    # nothing (names in /etc/hosts still resolve) and torch falls back to printing the address.
    "RES_OPTIONS": "attempts:0",
}
# Settings for every Ray Train controller of a facegan job (job-level runtime_env; a value the user
# set in the environment wins). After a failure Ray Train first waits for every worker to destroy
# its torch process group: a frozen (hung) worker never does, and Ray's default wait is 30 s of
# dead time before each restart; a healthy worker's destroy takes milliseconds.
JOB_VARS = {"TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S": "5"}
DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265


def ensure_bootstrap_file(home: str | Path) -> Path:
    """`home`/ray_bootstrap_config.yaml, created if missing (an existing one is left untouched)."""
    path = Path(home) / BOOTSTRAP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes racing here must not clobber each other or a launcher's file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(BOOTSTRAP_TEXT)
    return path


def offline_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) for Ray processes that must keep to this machine.

    Ensures the bootstrap file in base's HOME, turns usage stats off (and points their URL at a
    closed loopback port), forces W&B offline unless WANDB_API_KEY is set (WANDB_MODE=disabled is
    kept), and adds LOCAL_VARS (FACEGAN_ALLOW_DNS=1 keeps DNS, e.g. for s3:// shards locally).
    """
    env = dict(os.environ if base is None else base)
    home = env.get("HOME") or str(Path.home())
    env["HOME"] = home
    ensure_bootstrap_file(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_USAGE_STATS_REPORT_URL"] = f"http://{LOCALHOST}:9/"
    if not env.get("WANDB_API_KEY") and env.get("WANDB_MODE") != "disabled":
        env["WANDB_MODE"] = "offline"
    if env.get("FACEGAN_ALLOW_DNS") != "1":
        env["RES_OPTIONS"] = f"{env.get('RES_OPTIONS', '')} {LOCAL_VARS['RES_OPTIONS']}".strip()
    return env


def runtime_env_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an offline env that Ray should set in every worker of a job.

    With JOB_VARS. HOME and LOCAL_VARS do not travel: on a real cluster each node has its own HOME, and its workers
    need DNS. Nor does any secret: Ray records a job's runtime_env where anyone with dashboard
    access reads it, so a W&B key goes to rank 0 through the object store instead
    (facegan.launch.trainer.ship_wandb_key).
    """
    return {**{k: env[k] for k in OFFLINE_VARS if env.get(k)}, **{k: env.get(k) or v for k, v in JOB_VARS.items()}}


def _apply_to_process(env: Mapping[str, str], *, local: bool) -> None:
    # ray.init spawns the GCS, raylet and dashboard with this process's environment.
    for key in ("HOME", *OFFLINE_VARS, *(LOCAL_VARS if local else ())):
        if key in env:
            os.environ[key] = env[key]


def start_local_cluster(*, num_cpus: int | None = None, num_gpus: int | None = None,
                        include_dashboard: bool = True, home: str | Path | None = None,
                        log_to_driver: bool = True) -> dict[str, Any]:
    """Start a one-node Ray cluster in this process (ray.init); its dashboard listens on 127.0.0.1.

    `home` (default $HOME) is where the bootstrap file and Ray's auth token live; it becomes this
    process's HOME. The dashboard (on 127.0.0.1) serves the state API that Ray Train's
    placement-group cleaner polls. Returns ray.init's address info.
    """
    import ray

    env = offline_env(dict(os.environ, HOME=str(home)) if home is not None else None)
    _apply_to_process(env, local=True)
    ctx = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=include_dashboard,
                   dashboard_host=LOCALHOST, configure_logging=False, log_to_driver=log_to_driver,
                   runtime_env={"env_vars": runtime_env_vars(env)})
    return dict(ctx.address_info)


def connect(address: str) -> dict[str, Any]:
    """Join a running cluster ("auto", "host:port"); its workers get the offline env vars.

    A token-auth cluster needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); inside `ray job submit` Ray provides both.
    """
    import ray

    env = offline_env()
    _apply_to_process(env, local=False)
    env_vars = runtime_env_vars(env)
    # Inside `ray job submit` Ray merges the job's runtime_env into this one and refuses a variable
    # set in both: the job's own value wins.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = (job.get("runtime_env") or {}).get("env_vars") or {}
    env_vars = {k: v for k, v in env_vars.items() if k not in taken}
    ctx = ray.init(address=address, configure_logging=False, runtime_env={"env_vars": env_vars})
    return dict(ctx.address_info)


PROBE_TIMEOUT_S = 3.0


def probe_address(address: str, *, where: str) -> None:
    """UserError within seconds when `address` (from `where`: a flag, field or $RAY_ADDRESS) is not
    "auto" or host:port, or nothing listens there: ray.init would otherwise retry for minutes."""
    import socket

    from facegan.errors import UserError

    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if address.startswith(("ray://", "http://", "https://")) else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{where}: expected auto or host:port (e.g. 127.0.0.1:6379), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(f"no Ray cluster at {address} ({where}: {reason}); start one (`make ray-up`) or leave the "
                        "address empty for a local cluster") from None


def ensure_ray(address: str = "", *, log_to_driver: bool = True, where: str = "ray.address") -> bool:
    """Use the Ray this process is already connected to, else join `address` (or $RAY_ADDRESS,
    as inside `ray job submit`), else start a local cluster (whose workers' output reaches this
    terminal only with log_to_driver; otherwise it stays in Ray's session logs). True if it started one.
    An address where no cluster answers is a UserError naming it (`where`: the flag or field)."""
    import ray

    if ray.is_initialized():
        return False
    if not address and os.environ.get("RAY_ADDRESS"):
        address, where = os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    if address:
        probe_address(address, where=where)
        try:
            connect(address)
        except ConnectionError as exc:
            from facegan.errors import UserError

            raise UserError(f"no Ray cluster at {address} ({where}: {str(exc).splitlines()[0][:200]})") from None
        return False
    check_local_memory()
    start_local_cluster(log_to_driver=log_to_driver)
    return True


LOCAL_RAY_BYTES = 16 << 30   # address space a local Ray (raylet, object store, GCS, workers) maps at the least


def check_local_memory() -> None:
    """A local cluster under an address-space cap (`ulimit -v`) or in a small container cannot map
    its object store: Ray then hangs or its workers die without a word. Refuse it with one line."""
    import resource

    from facegan.data.limits import available_memory, human
    from facegan.errors import UserError

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < LOCAL_RAY_BYTES:
        raise UserError(f"ulimit -v {soft // 1024}: a local Ray cluster needs at least {human(LOCAL_RAY_BYTES)} of "
                        "address space (its object store and workers); raise the limit, join a cluster "
                        "(ray.address) or run in-process (--no-ray)")
    if available_memory() < 1 << 30:
        raise UserError(f"only {human(available_memory())} of memory available: too little for a local Ray cluster "
                        "(object store and workers); free memory, join a cluster (ray.address) or use --no-ray")


# ================================================================== head node for `make ray-up`

def _ray_cli() -> str:
    found = Path(sys.executable).parent / "ray"
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def state_dir(port: int) -> Path:
    """Where `up` keeps the head's pid file, its log and Ray's session files (kept after `down`)."""
    return Path(tempfile.gettempdir()) / f"facegan-ray-{port}"


def _state_path(port: int) -> Path:
    return state_dir(port) / "head.json"


def _head_env(home: str | None = None) -> dict[str, str]:
    env = offline_env(dict(os.environ, HOME=home) if home else None)
    env["RAY_AUTH_MODE"] = "token"
    # `down` stops the whole one-node cluster: draining it first only waits out a 30 s timeout.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Job entrypoints (`python ray_jobs/train.py`) must find this venv's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _has_token(env: Mapping[str, str]) -> bool:
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path(env["HOME"]) / ".ray" / "auth_token")
    return Path(path).is_file() and Path(path).stat().st_size > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (we are its parent while `up` runs) still answers kill(0).
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return status != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((LOCALHOST, port)) == 0


def _read_state(port: int) -> dict[str, Any] | None:
    path = _state_path(port)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if _alive(int(state["pid"])) else None


def head_up(*, port: int = DEFAULT_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
            num_cpus: int | None = None, num_gpus: int | None = None, timeout: float = 90.0) -> dict[str, Any]:
    """Start a token-auth head node (GCS `port`; dashboard + job server on 127.0.0.1:`dashboard_port`).

    The head runs as `ray start --head --block` in its own session; its pid is recorded so that
    `head_down` stops exactly this cluster (`ray stop` would stop every Ray on the machine).
    """
    state = _read_state(port)
    if state is not None:
        return state
    for p in (port, dashboard_port):
        if _port_open(p):
            raise RuntimeError(f"port {p} on {LOCALHOST} is already in use; pick another (--port / --dashboard-port)")
    env = _head_env()
    if not _has_token(env):
        # `ray start` (unlike ray.init) does not create a token. stdout is the token: keep it off the terminal.
        subprocess.run([_ray_cli(), "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = state_dir(port)
    root.mkdir(parents=True, exist_ok=True)
    # Ray's fixed defaults for these (52365, 10001) collide with any other Ray on the machine; a
    # head whose dashboard agent cannot bind accepts no jobs ("No available agent").
    agent_port, client_port = _free_port(), _free_port()
    cmd = [_ray_cli(), "start", "--head", "--block", f"--port={port}",
           "--include-dashboard=true", f"--dashboard-host={LOCALHOST}", f"--dashboard-port={dashboard_port}",
           f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
           "--disable-usage-stats", f"--temp-dir={root / 'tmp'}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    log_path = root / "head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    state = {"pid": proc.pid, "address": f"{LOCALHOST}:{port}", "dashboard": f"http://{LOCALHOST}:{dashboard_port}",
             "log": str(log_path), "home": env["HOME"]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with status {proc.returncode}; see {log_path}:\n"
                               + log_path.read_text()[-3000:])
        # Jobs need the dashboard (job server) and the head's dashboard agent (runs them).
        if "Ray runtime started" in log_path.read_text() and _job_server_ready(state["dashboard"]) \
                and _port_open(agent_port):
            _state_path(port).write_text(json.dumps(state, indent=1))
            return state
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"the head node did not come up within {timeout:.0f}s; see {log_path}")


def _job_server_ready(dashboard: str) -> bool:
    try:
        with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2) as resp:
            return resp.status == 200
    except OSError as exc:
        # 401: up, but wants the token (job submission sends it).
        return getattr(exc, "code", None) == 401


def head_down(*, port: int = DEFAULT_PORT, timeout: float = 60.0) -> bool:
    """Stop the head `head_up` started on `port` (SIGTERM to its `ray start --block`, which stops
    the node's processes and their workers). False if none was running."""
    path = _state_path(port)
    state = _read_state(port)
    if state is None:
        path.unlink(missing_ok=True)
        return False
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    if _alive(pid):
        # `up` made the head a session leader: its process group is exactly this cluster's processes.
        os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def submit_hint(state: Mapping[str, Any]) -> str:
    return (f"  RAY_AUTH_MODE=token RAY_ADDRESS={state['dashboard']} \\\n"
            f"    ray job submit --working-dir . -- python ray_jobs/train.py --config CONFIG.yaml [--set k=v ...]\n"
            f"  (the token is in {state['home']}/.ray/auth_token; other machines set RAY_AUTH_TOKEN)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facegan.launch.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("FACEGAN_RAY_PORT", DEFAULT_PORT)),
                        help="GCS port of the head (default $FACEGAN_RAY_PORT or %(default)s)")
    parser.add_argument("--dashboard-port", type=int,
                        default=int(os.environ.get("FACEGAN_RAY_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)),
                        help="dashboard / job server port (default $FACEGAN_RAY_DASHBOARD_PORT or %(default)s)")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--num-gpus", type=int, default=None)
    args = parser.parse_args(argv)
    if args.action == "up":
        state = head_up(port=args.port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus)
        print(f"Ray head up (pid {state['pid']}): address {state['address']}, dashboard {state['dashboard']}")
        print("Submit a training job from the repository root:")
        print(submit_hint(state))
        return 0
    if args.action == "down":
        print("Ray head stopped" if head_down(port=args.port) else f"no facegan Ray head on port {args.port}")
        return 0
    state = _read_state(args.port)
    if state is None:
        print(f"no facegan Ray head on port {args.port}")
        return 1
    print(f"Ray head running (pid {state['pid']}): address {state['address']}, dashboard {state['dashboard']}")
    subprocess.run([_ray_cli(), "status", f"--address={state['address']}"], env=_head_env(state["home"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
