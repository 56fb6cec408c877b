"""Metric sinks besides the loop's JSON-lines file: W&B, the one place facegan imports wandb.

    sinks = make_sinks(cfg, rank=0)                    # () when wandb.enabled is false or mode disabled
    train(cfg, hooks=Hooks(sinks=sinks))

One factory for in-process runs (`facegan train --no-ray`) and Ray Train workers (rank 0 only, one
run per Ray run kept across restarts through `run_id`). Offline unless the user configured a key
(`WANDB_API_KEY`, or `wandb login`'s ~/.netrc for `wandb.mode: online`); an offline run ends with
the `wandb sync` line that uploads it (`sync_command`).

What a run sends: the tick means (losses, rates, scores) and sample grids, every step's losses
(`step/...`: the loop's losses.jsonl rows) as history, `loss_curve.png` as an image and an
artifact at the end, and with `wandb.log_checkpoints` the last checkpoint as a "model" artifact.
Tagged with the family (and the sweep's name for a sweep trial); `job_type` train / sweep-trial /
eval. A resumed run continues its W&B run (`resume="allow"`, the same id) and sends only steps
after the last one it sent before: the loop redoes the steps after its checkpoint with the same
values, and W&B's history must not go back in time.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from facegan.config import to_dict
from facegan.errors import UserError
from facegan.stats import Sink

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
RUN_ID_FILE = "facegan-run-id"   # under <out_dir>/wandb: the in-process run's W&B id, for resumes


def netrc_key(base_url: str | None = None) -> str | None:
    """The API key `wandb login` stored in ~/.netrc (or $NETRC) for W&B's host, if any."""
    host = urlparse(base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname or ""
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry and entry[2] else None


def has_credentials() -> bool:
    return bool(os.environ.get("WANDB_API_KEY")) or netrc_key() is not None


def sync_command(run_dir: str | Path) -> str:
    """The command that uploads an offline run folder."""
    return f"wandb sync {run_dir}"


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


def resolve_mode(mode: str) -> str:
    """wandb.mode "auto": online only when the user configured it (a key, or WANDB_MODE=online);
    anything else stays on this machine."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class WandbSink:
    """One W&B run per job, from rank 0. Offline unless the user configured a key and mode."""

    def __init__(self, *, project: str, config: dict[str, Any], out_dir: Path, mode: str = "auto",
                 entity: str = "", group: str = "", name: str = "", run_id: str | None = None,
                 job_type: str = "train", tags: tuple[str, ...] = (), log_checkpoints: bool = False) -> None:
        mode = resolve_mode(mode)
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
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_checkpoints = log_checkpoints
        try:
            self.run = wandb.init(project=project, entity=entity or None, group=group or None, name=name or None,
                                  config=config, dir=str(out_dir), mode=mode, id=run_id, resume="allow",
                                  job_type=job_type, tags=list(dict.fromkeys(tags)) or None,
                                  settings=wandb.Settings(silent=True, x_disable_stats=True,
                                                          init_timeout=INIT_TIMEOUT_S))
        except (wandb.errors.Error, TimeoutError) as exc:
            raise UserError(f"wandb.mode {mode}: W&B did not start a run ({' '.join(str(exc).split())[:200]}); check "
                            "WANDB_API_KEY and the network, or set wandb.mode: offline") from None
        self.mode = mode
        # The last step an earlier attempt of this run sent, per kind (a resumed run redoes the
        # steps after its checkpoint): history only moves forward.
        self._step_file = self.out_dir / "wandb" / f"{self.run.id}.last_step.json"
        self.last = {"rows": -1, "ticks": -1}
        try:
            self.last.update({k: int(v) for k, v in json.loads(self._step_file.read_text()).items() if k in self.last})
        except (OSError, ValueError, AttributeError):
            pass

    @property
    def run_dir(self) -> str:
        """The run's folder (what `wandb sync` takes), not its files/ subfolder."""
        return str(Path(self.run.dir).parent) if self.run is not None else ""

    def _sent(self, kind: str, step: int) -> None:
        self.last[kind] = step
        self._step_file.write_text(json.dumps(self.last))

    def log(self, metrics: dict[str, float], *, step: int, images: dict[str, Path] | None = None) -> None:
        if step <= self.last["ticks"]:
            return
        data: dict[str, Any] = dict(metrics)
        for key, path in (images or {}).items():
            data[key] = self.wandb.Image(str(path))
        self.run.log(data, step=step)
        self._sent("ticks", step)

    def progress(self, images_seen: int) -> None:
        pass  # W&B gets tick means only

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        """Every step's losses (the loop's losses.jsonl rows) as history, under step/<name>."""
        last = self.last["rows"]
        for row in rows:
            step = int(row["step"])
            if step <= last:
                continue
            values = {f"step/{k}": v for k, v in row.items()
                      if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.run.log(values, step=step)
            last = step
        if last > self.last["rows"]:
            self._sent("rows", last)

    def _artifacts(self) -> None:
        curve = self.out_dir / "loss_curve.png"
        if curve.is_file():
            self.run.log({"loss_curve": self.wandb.Image(str(curve))}, step=max(*self.last.values(), 0))
            art = self.wandb.Artifact(f"{self.run.id}-loss-curve", type="loss-curve")
            art.add_file(str(curve))
            self.run.log_artifact(art)
        if self.log_checkpoints:
            from facegan.checkpoint import list_checkpoints

            found = list_checkpoints(self.out_dir / "checkpoints")
            if found:
                meta = json.loads((found[-1] / "meta.json").read_text())
                art = self.wandb.Artifact(f"{self.run.id}-checkpoint", type="model",
                                          metadata={k: meta.get(k) for k in ("step", "images_seen", "family")})
                art.add_dir(str(found[-1]))
                self.run.log_artifact(art, aliases=["latest", f"step-{meta.get('step')}"])

    def close(self) -> None:
        self._artifacts()
        offline = self.mode == "offline"
        run_dir = self.run_dir
        self.run.finish()
        if offline:
            log.info("W&B run saved offline in %s; upload it with: %s", run_dir, sync_command(run_dir))


def log_eval_run(result: dict[str, Any], *, project: str, out_dir: Path, name: str = "",
                 tags: tuple[str, ...] = ()) -> tuple[str, str]:
    """One W&B run of job_type "eval" for a `facegan eval` result: its numeric scores as history
    (step 0) and summary, the request as config, tags for the features and the source kind.
    Offline unless the user configured a key (as training runs). Returns (run folder, mode)."""
    scores = {k: float(v) for k, v in result.get("scores", {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    request = result.get("request", {})
    kind = "checkpoint" if request.get("checkpoint") else "images" if request.get("images") else "baseline"
    sink = WandbSink(project=project, config={"request": request, "source": result.get("source", ""),
                                              "kimg": result.get("kimg")},
                     out_dir=out_dir, name=name or None, job_type="eval",
                     tags=(f"features-{request.get('features', '')}", kind, *tags))
    sink.log(scores, step=0)
    sink.run.summary.update(scores)
    run_dir, mode = sink.run_dir, sink.mode
    sink.close()
    return run_dir, mode


def in_process_run_id(out_dir: Path, *, resume: str) -> str:
    """The W&B id of an in-process run: the one recorded in <out_dir>/wandb when the run resumes
    (train.resume set), a new one (recorded there) when it starts fresh."""
    path = out_dir / "wandb" / RUN_ID_FILE
    if resume:
        try:
            recorded = path.read_text().strip()
            if recorded:
                return recorded
        except OSError:
            pass
    run_id = f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in out_dir.name[:40])}-{secrets.token_hex(5)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


def make_sinks(cfg: Any, *, rank: int = 0, run_id: str | None = None, name: str = "",
               config_dict: dict[str, Any] | None = None) -> tuple[Sink, ...]:
    """Rank-0 sinks for a run config: a W&B run when `wandb.enabled` and the mode is not disabled.
    `run_id`: the Ray run's W&B id (launch.trainer.wandb_run_id); in-process runs keep theirs in out_dir."""
    w = cfg.wandb
    if rank != 0 or not w.enabled or w.mode == "disabled":
        return ()
    mode = w.mode
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        mode = os.environ["WANDB_MODE"]   # the environment's "stay on this machine" wins (CI, tests)
    elif mode == "online" and not has_credentials():
        log.warning("wandb.mode=online but there is no W&B key (WANDB_API_KEY, or `wandb login`): logging offline")
        mode = "offline"
    _check_wandb_env(resolve_mode(mode))   # before anything is written for the run (its recorded W&B id)
    out_dir = Path(cfg.train.out_dir)
    tags = (*w.tags, cfg.model.family, *((w.group,) if w.job_type == "sweep-trial" and w.group else ()))
    return (WandbSink(project=w.project, entity=w.entity, group=w.group,
                      name=w.name or name or out_dir.name, mode=mode,
                      config=config_dict if config_dict is not None else to_dict(cfg),
                      out_dir=out_dir, run_id=run_id or in_process_run_id(out_dir, resume=cfg.train.resume),
                      job_type=w.job_type, tags=tags, log_checkpoints=w.log_checkpoints),)
