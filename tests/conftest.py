"""Shared fixtures: tiny CelebA/UTKFace layouts and small synthetic shard sets, made in tmp dirs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest_ray import driver_wedged, ray_cluster, stop_cluster  # noqa: F401  (ray_cluster: the fixture)
from facegan.data.records import CELEBA_ATTRS

# Nothing the tests start may talk to the outside world.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
_EXIT: dict[str, int] = {}


def _uses_cluster(item: pytest.Item | None) -> bool:
    return item is not None and "ray_cluster" in getattr(item, "fixturenames", ())


def _kills_ray_processes(item: pytest.Item) -> bool:
    return item.get_closest_marker("kills_ray_processes") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared Ray cluster run first, back to back (in their own order): the driver's
    connection then never sits idle for long, and the cluster is gone before the rest run. Among
    them, those that SIGKILL workers or remove nodes run last, so no other test meets a cluster
    they have disturbed (a precaution: the one hang seen was a fork of the driver, fixed in
    facegan.data.writer._pool_context)."""
    on_cluster = [i for i in items if _uses_cluster(i)]
    calm = [i for i in on_cluster if not _kills_ray_processes(i)]
    items[:] = calm + [i for i in on_cluster if _kills_ray_processes(i)] + [i for i in items if not _uses_cluster(i)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    yield
    if _uses_cluster(item) and not _uses_cluster(nextitem):
        stop_cluster()  # the last test on the cluster: free its processes (and CPU) for the rest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # A driver whose ray.shutdown() never returned would block interpreter exit in Ray's C++ core
    # worker; its cluster is already killed (conftest_ray.stop_cluster), so end the process here.
    if driver_wedged():
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT.get("status", 1))


def chromium() -> str | None:
    """The headless browser the HTML reports are checked in (`make chromium` installs it)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def skip_unless_required(flag: str, reason: str) -> None:
    """Skip with `reason`, or fail where the environment variable `flag` is "1": CI (.ci/run) sets
    FACEGAN_REQUIRE_CHROMIUM and FACEGAN_REQUIRE_MOUNTS, so there the check must run."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason}, but {flag}=1")
    pytest.skip(reason)


def write_jpeg(path: Path, *, seed: int, size: tuple[int, int] = (44, 54)) -> None:
    """A small real JPEG (w x h) with a seeded pattern."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(1, 1, 3))
    img = (base + rng.integers(0, 40, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def make_celeba(root: Path, *, n: int = 24, extra_rows: int = 0, crlf: bool = True, seed: int = 0,
                annotations: Path | None = None) -> dict[str, dict]:
    """CelebA layout: img_align_celeba/*.jpg + list_attr/partition/identity files.

    `extra_rows` annotation rows have no image (as when the full annotation files sit beside a
    partial image set). Returns the expected labels by key.
    """
    rng = np.random.default_rng(seed)
    ann = annotations or root
    ann.mkdir(parents=True, exist_ok=True)
    total = n + extra_rows
    nl = "\r\n" if crlf else "\n"
    attr_lines = [str(total), " ".join(CELEBA_ATTRS) + " "]
    part_lines, id_lines = [], []
    expected: dict[str, dict] = {}
    for i in range(1, total + 1):
        name = f"{i:06d}.jpg"
        attrs = rng.integers(0, 2, size=len(CELEBA_ATTRS))
        # CelebA pads single-digit values to two columns: " 1" after one space, "-1" after one.
        cols = "".join(f" {' 1' if a else '-1'}" for a in attrs)
        attr_lines.append(name + cols)
        partition = int(rng.choice([0, 0, 0, 1, 2]))
        identity = int(rng.integers(1, 10))
        part_lines.append(f"{name} {partition}")
        id_lines.append(f"{name} {identity}")
        if i <= n:
            write_jpeg(root / "img_align_celeba" / name, seed=seed * 1000 + i)
            expected[f"{i:06d}"] = {"attrs": attrs.tolist(), "partition": partition, "identity": identity}
    (ann / "list_attr_celeba.txt").write_bytes((nl.join(attr_lines) + nl).encode())
    (ann / "list_eval_partition.txt").write_bytes((nl.join(part_lines) + nl).encode())
    (ann / "identity_CelebA.txt").write_bytes((nl.join(id_lines) + nl).encode())
    return expected


def make_utkface(root: Path, *, n: int = 12, seed: int = 0) -> list[str]:
    """UTKFace chips, including the two kinds of malformed names the real release has."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        names.append(f"{age}_{gender}_{race}_2017010{i % 10}1{i:08d}.jpg.chip.jpg")
    names.append("61_1_20170109142408075.jpg.chip.jpg")   # race missing (real example)
    names.append("39_1_20170116174525125.jpg.chip.jpg")   # race missing (real example)
    names.append("notaface.jpg.chip.jpg")                 # unparseable
    for j, name in enumerate(names):
        write_jpeg(root / name, seed=seed * 1000 + j, size=(40, 40))
    return names


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shard set: 160 faces at 32x32, 16 per shard (many shards for splitting)."""
    from facegan.config import from_dict
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards

    out = tmp_path_factory.mktemp("synth") / "shards"
    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 160, "resolution": 32,
                                     "shard_size": 16, "workers": 2, "seed": 3})
    build_shards(recipe, root=None, out=out, progress=False)
    return out

