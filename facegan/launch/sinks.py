"""Metric sinks besides the loop's JSON-lines file: W&B, the one place facegan imports wandb.

    sinks = make_sinks(cfg, rank=0)                    # () when wandb.enabled is false or mode disabled
    train(cfg, hooks=Hooks(sinks=sinks))

One factory for in-process runs (`facegan train --no-ray`) and Ray Train workers (rank 0 only, one
run per Ray run kept across restarts through `run_id`). Offline unless the user configured a key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from facegan.config import to_dict
from facegan.errors import UserError

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")   # what wandb.init accepts
INIT_TIMEOUT_S = 30.0   # an online start that cannot reach W&B gives up after this (wandb's default: 90 s)


def _check_wandb_env(mode: str) -> None:
    """One line for what wandb would report with a traceback (a bad $WANDB_MODE) or after minutes
    of retries (a malformed key)."""
    env = os.environ.get("WANDB_MODE", "")
    if env and env not in WANDB_MODES:
        raise UserError(f"$WANDB_MODE: expected one of online, offline, disabled, got {env!r}")
    key = os.environ.get("WANDB_API_KEY", "")
    if mode == "online" and key:
        try:
            from wandb.sdk.lib.wbauth.validation import check_api_key
        except ImportError:   # another wandb version: its own checks apply
            return
        problem = check_api_key(key)
        if problem:
            raise UserError(f"WANDB_API_KEY: {problem} Set a valid key, or wandb.mode: offline")


class WandbSink:
    """One W&B run per job, from rank 0. Offline unless the user configured a key and mode."""

    def __init__(self, *, project: str, config: dict[str, Any], out_dir: Path, mode: str = "auto",
                 entity: str = "", group: str = "", name: str = "", run_id: str | None = None) -> None:
        if mode == "auto":
            # Online only when the user configured it (a key, or WANDB_MODE=online); anything
            # else stays on this machine.
            has_key = bool(os.environ.get("WANDB_API_KEY"))
            mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
        _check_wandb_env(mode)
        if mode in ("offline", "disabled"):
            # wandb's process-wide analytics (OpenTelemetry probe) and Sentry error reporting
            # read the environment, not init(mode=...): without these an offline run still
            # dials wandb's servers when it finishes.
            os.environ["WANDB_MODE"] = mode
            os.environ["WANDB_ERROR_REPORTING"] = "false"
        elif os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # wandb rejects an empty mode
        import wandb

        if mode in ("offline", "disabled"):
            try:
                from wandb.analytics.opentelemetry import opentelemetry_proxy

                opentelemetry_proxy.disable()
            except (ImportError, AttributeError):
                pass
        self.wandb = wandb
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=project, entity=entity or None, group=group or None, name=name or None,
                                  config=config, dir=str(out_dir), mode=mode, id=run_id, resume="allow",
                                  settings=wandb.Settings(silent=True, x_disable_stats=True,
                                                          init_timeout=INIT_TIMEOUT_S))
        except (wandb.errors.Error, TimeoutError) as exc:
            raise UserError(f"wandb.mode {mode}: W&B did not start a run ({' '.join(str(exc).split())[:200]}); check "
                            "WANDB_API_KEY and the network, or set wandb.mode: offline") from None
        self.mode = mode

    @property
    def run_dir(self) -> str:
        return str(self.run.dir) if self.run is not None else ""

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        data: dict[str, Any] = dict(metrics)
        for key, path in (images or {}).items():
            data[key] = self.wandb.Image(str(path))
        self.run.log(data, step=step)

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        pass  # per-step rows stay in the JSON-lines file; W&B gets tick means

    def close(self) -> None:
        self.run.finish()


def make_sinks(cfg: Any, *, rank: int = 0, run_id: str | None = None, name: str = "",
               config_dict: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """Rank-0 sinks for a run config: a W&B run when `wandb.enabled` and the mode is not disabled."""
    w = cfg.wandb
    if rank != 0 or not w.enabled or w.mode == "disabled":
        return ()
    mode = w.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("wandb.mode=online but WANDB_API_KEY is not set: logging offline")
        mode = "offline"
    return (WandbSink(project=w.project, entity=w.entity, group=w.group,
                      name=w.name or name or Path(cfg.train.out_dir).name, mode=mode,
                      config=config_dict if config_dict is not None else to_dict(cfg),
                      out_dir=Path(cfg.train.out_dir), run_id=run_id),)
