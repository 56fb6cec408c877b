"""A training run's folder: one run per `train.out_dir`, one writer at a time.

    with claim_run_dir(cfg, overwrite=args.overwrite):   # facegan train, classifier train, ray_jobs/
        run(cfg)

A fresh run (`train.resume` empty) into a folder that already holds a run (checkpoints, losses,
config.json) is refused: it would replace the checkpoints and append to the old losses. Resume it
(`train.resume: latest`) or pass --overwrite, which removes the earlier run's files (only those a run
writes) first. A second writer into a folder in use is refused with the holder's pid and host
(facegan.data.lock), and a resume that would train nothing is refused too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

from facegan.checkpoint import list_checkpoints, read_meta
from facegan.config import ConfigError
from facegan.data.lock import hold_lock

log = logging.getLogger(__name__)

# What a run writes into its folder (facegan.loop, the families, Ray Train's storage): --overwrite
# removes these and nothing else.
RUN_FILES = ("checkpoints", "samples", "losses.jsonl", "losses", "loss_curve.png", "config.json", "ray",
             "video", "video.mp4", "classifier_eval.json")


def previous_run(out: Path) -> list[str]:
    """What in `out` shows an earlier run, e.g. ['3 checkpoints', 'losses.jsonl']."""
    found = []
    ckpts = list_checkpoints(out / "checkpoints")
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''}")
    found += [name for name in ("losses.jsonl", "config.json", "ray") if (out / name).exists()]
    return found


def _resume_point(cfg: Any, out: Path) -> Path | None:
    resume = cfg.train.resume
    if resume in ("latest", "latest_or_fresh"):
        found = list_checkpoints(out / "checkpoints")
        return found[-1] if found else None
    return Path(resume) if resume and (Path(resume) / "meta.json").is_file() else None


@contextlib.contextmanager
def claim_run_dir(cfg: Any, *, overwrite: bool = False) -> Iterator[Path]:
    """Hold `train.out_dir`'s lock for the run; refuse a fresh run over an earlier one (unless
    `overwrite`, which clears it) and a resume that is already at `train.total_kimg`."""
    if "://" in cfg.train.out_dir:   # not a local folder: no flock to hold there
        yield Path(cfg.train.out_dir)
        return
    out = Path(cfg.train.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.out_dir: {out} exists and is not a directory")
    created = not out.exists()
    try:
        with hold_lock(out, what="train.out_dir"):
            _check_previous(cfg, out, overwrite=overwrite)
            yield out
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()   # a run that failed before writing anything leaves no empty folder behind
        raise


def _check_previous(cfg: Any, out: Path, *, overwrite: bool) -> None:
    """Refuse (or with `overwrite` clear) an earlier run under a fresh one; refuse a resume at its end."""
    earlier = previous_run(out)
    if earlier and not cfg.train.resume:
        if not overwrite:
            raise ConfigError(f"train.out_dir: {out} already holds a run ({', '.join(earlier)}); resume it with "
                              "--set train.resume=latest, replace it with --overwrite, or choose another "
                              "train.out_dir")
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        log.warning("train.out_dir: removed the earlier run in %s (--overwrite): %s", out, ", ".join(earlier))
    point = _resume_point(cfg, out)
    if point is not None:
        meta = read_meta(point)
        kimg = float(meta.get("images_seen", 0)) / 1000
        if kimg >= cfg.train.total_kimg:
            raise ConfigError(f"train.total_kimg: {point} is already at {kimg:g} kimg, not below "
                              f"train.total_kimg {cfg.train.total_kimg:g}; raise train.total_kimg to train on")
