"""Object storage over its real protocol: a local S3-compatible server (moto's standalone server on
127.0.0.1, a free port, stopped by the test) and facegan's S3 paths end to end, the way
cluster.yaml lays a multi-node run out: shards built to and streamed from s3://, Ray Train
checkpoints in ray.storage_path=s3://, a worker killed and the run resumed from the bucket,
samples drawn from the checkpoint there. Credentials come only from the environment (dummy
values) and the test greps everything the runs wrote for them. A bucket that does not exist,
credentials the server rejects and an endpoint that does not answer each end a command with one
line, within seconds.

    .venv/bin/python -m pytest tests/test_s3.py -q        # inside CI's loopback-only netns
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from conftest_ray import free_port

REPO = Path(__file__).resolve().parents[1]
KEY_ID = "FACEGANTESTKEYID0001"
SECRET = "facegan-test-secret-3f9c1e7a"        # dummy: grepped for in every output


def start_moto(env: dict[str, str], *, auth: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server_env = dict(env, INITIAL_NO_AUTH_ACTION_COUNT="3") if auth else env
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a client of a fresh moto server with one bucket, `bucket`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    home = tmp_path_factory.mktemp("s3home")
    base.update(HOME=str(home), AWS_CONFIG_FILE=str(home / "none"), AWS_SHARED_CREDENTIALS_FILE=str(home / "none"),
                AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(REPO), WANDB_MODE="offline",
                RAY_USAGE_STATS_ENABLED="0")
    proc, endpoint = start_moto(base)
    env = dict(base, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
    try:
        client(env).create_bucket(Bucket="bucket")
        yield env
    finally:
        stop(proc)


def client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def keys(env: dict[str, str], prefix: str) -> list[str]:
    pages = client(env).get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def facegan(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: int = 600
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facegan.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_secret_in(*roots: Path, texts: tuple[str, ...] = ()) -> None:
    for text in texts:
        assert SECRET not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), f"credentials written to {path}"


def test_shards_build_verify_stream_inspect_on_s3(s3: dict[str, str], tmp_path: Path) -> None:
    res = facegan(s3, "shards", "build", "--source", "synthetic", "--count", "96", "--resolution", "32",
                  "--shard-size", "16", "--out", "s3://bucket/set", "--no-progress")
    assert res.returncode == 0, res.stderr
    names = keys(s3, "set/")
    assert "set/manifest.json" in names and sum(n.endswith(".tar") for n in names) == 7   # 6 train, 1 test
    assert not [n for n in names if "/.partial/" in n]       # staged shards moved into place
    outputs = [res.stdout + res.stderr]
    for args in (("verify", "s3://bucket/set"),
                 ("stream", "s3://bucket/set", "--batch-size", "8", "--batches", "4", "--workers", "2"),
                 ("inspect", "s3://bucket/set", "--preview", str(tmp_path / "p.png"))):
        res = facegan(s3, "shards", *args)
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout + res.stderr)
    assert "ok: 7 shards, 96 samples" in outputs[1] and "0 samples skipped" in outputs[2]
    # A rebuild keeps every shard (their inputs did not change), read back from the bucket.
    res = facegan(s3, "shards", "build", "--source", "synthetic", "--count", "96", "--resolution", "32",
                  "--shard-size", "16", "--out", "s3://bucket/set", "--no-progress")
    assert res.returncode == 0 and "built 0 shards, kept 7" in res.stdout, res.stdout + res.stderr
    no_secret_in(tmp_path, texts=tuple(outputs))


def test_import_webdataset_tars_from_s3(s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facegan.data.importer import import_shards
    from facegan.data.stream import ShardSet, train_loader
    from facegan.data.writer import verify_shards
    from test_webdataset_interop import shard_writer_set

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, s3[name])
    shard_writer_set(tmp_path / "wds", n=30)
    for path in sorted((tmp_path / "wds").iterdir()):
        client(s3).upload_file(str(path), "bucket", f"wds/{path.name}")
    res = facegan(s3, "shards", "import", "s3://bucket/wds", "--attrs", "smiling")
    assert res.returncode == 0 and "imported 30 samples" in res.stdout, res.stdout + res.stderr
    assert "wds/manifest.json" in keys(s3, "wds/")
    # A brace pattern over part of it, the manifest kept locally (--out), the shards read from the bucket.
    m = import_shards(["s3://bucket/wds/faces-{000000..000001}.tar"], out=str(tmp_path / "m"))
    assert m["counts"]["total"] == 20 and m["shard_location"] == "s3://bucket/wds"
    for where in ("s3://bucket/wds", str(tmp_path / "m")):
        assert verify_shards(where) == []
        batch = next(train_loader(ShardSet.open(where), batch_size=4, num_workers=0))
        assert batch["image"].shape == (4, 3, 32, 32) and batch["num_skipped"] == 0


def test_missing_bucket_rejected_credentials_and_a_silent_server_are_one_line_each(
        s3: dict[str, str], tmp_path: Path) -> None:
    build = ("shards", "build", "--source", "synthetic", "--count", "32", "--resolution", "32", "--out")
    t0 = time.time()
    one_line_error(facegan(s3, *build, "s3://nobucket/set"), "s3://nobucket", "does not exist")
    one_line_error(facegan(s3, "shards", "verify", "s3://nobucket/set"), "nobucket", "does not exist")
    assert keys(s3, "") == [] or not any(k.startswith("nobucket") for k in keys(s3, ""))
    # Credentials: a server that checks signatures (moto's IAM auth), a real key, then a wrong one.
    proc, endpoint = start_moto(s3, auth=True)
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap", region_name="us-east-1")
        iam.create_user(UserName="facegan")
        iam.put_user_policy(UserName="facegan", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="facegan")["AccessKey"]
        authed = dict(s3, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=key["AccessKeyId"],
                      AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        client(authed).create_bucket(Bucket="bucket")
        client(authed).put_object(Bucket="bucket", Key="set/manifest.json", Body=b"{}")
        good = facegan(authed, "shards", "verify", "s3://bucket/set")
        assert "missing field" in good.stderr, good.stderr     # got past the credentials to the manifest
        t1 = time.time()
        one_line_error(facegan(dict(authed, AWS_SECRET_ACCESS_KEY=SECRET), "shards", "verify", "s3://bucket/set"),
                       "s3://bucket", "refused the credentials", "AWS_SECRET_ACCESS_KEY")
        assert time.time() - t1 < 30
    finally:
        stop(proc)
    # An endpoint that accepts connections and never answers, and one where nothing listens.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    try:
        t1 = time.time()
        line = one_line_error(facegan(dict(s3, AWS_ENDPOINT_URL=f"http://127.0.0.1:{silent.getsockname()[1]}"),
                                      "shards", "stream", "s3://bucket/set"), "does not answer", "AWS_ENDPOINT_URL")
        assert time.time() - t1 < 40, line
    finally:
        silent.close()
    t1 = time.time()
    one_line_error(facegan(dict(s3, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"), *build, "s3://bucket/x"),
                   "does not answer")
    assert time.time() - t1 < 30 and time.time() - t0 < 240


def _ray_train_workers(endpoint: str) -> list[Any]:
    """This test's Ray Train worker processes (their environment names its S3 endpoint)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" not in " ".join(proc.info["cmdline"] or []):
                continue
            if proc.environ().get("AWS_ENDPOINT_URL") == endpoint:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def ray_checkpoints(env: dict[str, str]) -> list[str]:
    """Ray Train's checkpoint folders of the run in s3://bucket/runs/run (complete: meta.json in)."""
    return sorted({k.split("/")[2] for k in keys(env, "runs/run/")
                   if k.split("/")[2].startswith("checkpoint_") and k.endswith("/meta.json")})


def registered_checkpoint(env: dict[str, str]) -> bool:
    """Whether Ray Train has registered a checkpoint of the run (its manager's snapshot in the
    bucket names one): only then does a restart resume from it rather than start over."""
    names = ray_checkpoints(env)
    if not names:
        return False
    try:
        snapshot = client(env).get_object(Bucket="bucket", Key="runs/run/checkpoint_manager_snapshot.json")
    except Exception:   # not written yet
        return False
    body = snapshot["Body"].read().decode()
    return any(name in body for name in names)


@pytest.mark.slow
def test_ray_build_and_a_killed_ray_train_run_resumed_from_the_bucket(s3: dict[str, str], tmp_path: Path) -> None:
    # Every command starts a local Ray cluster of its own, in the environment above (no RAY_ADDRESS).
    res = facegan(s3, "shards", "build", "--source", "synthetic", "--count", "128", "--resolution", "32",
                  "--shard-size", "16", "--out", "s3://bucket/rayset", "--ray", "--no-progress")
    assert res.returncode == 0 and "Ray node(s)" in res.stdout, res.stdout + res.stderr
    outputs = [res.stdout + res.stderr]
    assert facegan(s3, "shards", "verify", "s3://bucket/rayset").returncode == 0

    out = tmp_path / "run"
    steps, ckpt_every = 48, 8
    cfg = {"data": {"shards": "s3://bucket/rayset", "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
           "model": {"family": "dcgan", "resolution": 32, "base_channels": 8, "z_dim": 16},
           "train": {"total_kimg": steps * 0.016, "tick_kimg": 2 * 0.016, "checkpoint_kimg": ckpt_every * 0.016,
                     "keep_checkpoints": 2, "grid_size": 4, "num_threads": 1, "out_dir": str(out)},
           "ray": {"num_workers": 2, "max_failures": 2, "storage_path": "s3://bucket/runs"},
           "wandb": {"enabled": False}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    train = subprocess.Popen([sys.executable, "-m", "facegan.cli", "train", str(config), "--no-progress"],
                             env=s3, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and train.poll() is None:
            if registered_checkpoint(s3):
                workers = _ray_train_workers(s3["AWS_ENDPOINT_URL"])
                if workers:
                    killed = workers[-1].pid
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.2)
        stdout, _ = train.communicate(timeout=600)
    finally:
        if train.poll() is None:
            train.kill()
    outputs.append(stdout)
    assert killed is not None, "the run ended before a checkpoint reached the bucket:\n" + stdout[-3000:]
    assert train.returncode == 0, stdout[-4000:]
    # Ray's checkpoints are in the bucket; the last one is the end of the run.
    ray_ckpts = ray_checkpoints(s3)
    assert ray_ckpts
    metas = [json.loads(client(s3).get_object(Bucket="bucket", Key=f"runs/run/{c}/meta.json")["Body"].read())
             for c in ray_ckpts]
    assert max(m["step"] for m in metas) == steps and all(m["world_size"] == 2 for m in metas)
    # The second attempt resumed from a checkpoint Ray fetched from the bucket (the loop says so),
    # and between the attempts every step was trained.
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", stdout)]
    assert resumed and all(s > 0 and s % ckpt_every == 0 for s in resumed), stdout[-4000:]
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    step_rows = [r["step"] for r in rows if r.get("kind") == "step"]
    assert sorted(set(step_rows)) == list(range(1, steps + 1))

    grid = tmp_path / "grid.png"
    res = facegan(s3, "sample", "--checkpoint", "s3://bucket/runs/run", "-n", "4", "--out", str(grid))
    assert res.returncode == 0 and grid.is_file(), res.stderr
    outputs.append(res.stdout + res.stderr)
    assert f"({steps * 0.016:.1f} kimg" in res.stdout
    ray_logs = [p for p in (Path("/tmp/ray"),) if p.is_dir()]
    no_secret_in(out, tmp_path, texts=tuple(outputs))
    for root in ray_logs:   # Ray's session logs and records (runtime envs, job info)
        for path in root.glob("session_*/logs/*"):
            if path.is_file() and path.stat().st_size < 50 << 20:
                assert SECRET.encode() not in path.read_bytes(), f"credentials in {path}"
    for key in keys(s3, ""):
        body = client(s3).get_object(Bucket="bucket", Key=key)["Body"].read()
        assert SECRET.encode() not in body, f"credentials written to s3://bucket/{key}"
