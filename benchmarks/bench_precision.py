"""Does bf16 CPU autocast + channels_last keep each family's sample quality, and how much faster is it?

    # the shard set (CelebA at 64x64, with labels) and, for the families that need them, a trained
    # attribute classifier (overlay's o) and a trained GAN generator (the predictor's frozen G)
    facegan shards build shards/celeba64.yaml --root ../shared/data/celeba_sample --out data/celeba64
    # every family with a configs/<family>_celeba64.yaml, 3 kimg per arm, two arms at a time
    .venv/bin/python benchmarks/bench_precision.py --shards data/celeba64 --out runs/precision \\
        --classifier runs/classifier_celeba64 --predictor-generator runs/infogan_celeba64 --json precision.json
    # a subset, shorter; rerun the same line after a crash: finished arms are kept (--reuse)
    .venv/bin/python benchmarks/bench_precision.py --shards data/celeba64 --out runs/precision \\
        --families dcgan,wgangp --kimg 1 --reuse
    # only the table and JSON of what is already in --out (nothing trained or evaluated)
    .venv/bin/python benchmarks/bench_precision.py --shards data/celeba64 --out runs/precision --report --json p.json
    # a toy run on tiny shards (each family's smoke-size nets, see Family.smoke)
    .venv/bin/python benchmarks/bench_precision.py --shards /tmp/shards32 --out /tmp/bp --families dcgan \\
        --kimg 0.1 --smoke --num-samples 50

Arms, per family F (default: every family of facegan.families.FAMILIES with a
configs/F_celeba64.yaml, and progressive from configs/progressive_utkface64.yaml on the same shards,
its stage schedule scaled to the budget): three `facegan train CONFIG --no-ray` runs with the same
images-seen budget (`--kimg`), `fp32_s0` (train.precision fp32, channels_last false, seed 0),
`fp32_s1` (the same, seed 1: the seed-to-seed noise) and `bf16_s0` (bf16 autocast, channels_last
true, seed 0). Both settings are always given explicitly (train.precision's default is `auto`, bf16
on a CPU with bf16 units). Every arm also gets data.batch_size (`--batch-size`, 64), in-process
decoding (data.num_workers 0), train.num_threads (`--threads`), 4 ticks and one checkpoint at the
end, no periodic evaluation, no W&B, then `--set` overrides (KEY=VALUE for every family,
FAMILY:KEY=VALUE for one). Families with extra inputs: overlay's classifier (`--classifier`, else
the config's gan.classifier if that exists, else overlay is skipped), the predictor's frozen
generator (`--predictor-generator`, else skipped; gan.switch_kimg is set to half the budget so the
image loss is trained too). Arms run `--jobs` at a time (default 2, with `--threads 1` on a 2-core
machine); all training runs first, then the evaluations, so every timed run shares the machine with
the same kind of load. Logs of each subprocess go to OUT/logs/, one line per finished arm to the console.

Speed: the run's own training clock (the final checkpoint's meta `train_seconds`: the loop from its
first step to the last checkpoint, ticks included, start-up and the final evaluation not), and the
wall time around the subprocess beside it; speed-up = fp32_s0's train seconds / bf16_s0's.

Quality, the same number for the three arms of a family:
  generative families   fid_face of the final raw generator against the val split (`facegan eval
                        --features face --no-ema`, dlib's face descriptor: a judge trained on neither
                        precision), `--num-samples` images vs up to `--num-real` val faces, lower is
                        better; face_detection_rate is kept beside it in the JSON. Not the EMA: at a
                        few kimg with train.ema_kimg 10 the EMA generator is still mostly its
                        initialisation (0.5 ** (1 / 10) = 93% of it after 1 kimg), which two arms
                        of the same seed share, so it would hide what the precision did to training
  classifier            eval/val/mean_acc, its own val-split mean attribute accuracy at the end of the
                        run (the last tick of losses.jsonl), higher is better
  predictor             eval/image_mse, its own end-of-run reconstruction error |G(P(G(z))) - G(z)|^2
                        on fresh latents (the last tick of losses.jsonl), lower is better

Verdict (`verdict`): seed_spread = |q(fp32_s0) - q(fp32_s1)|, diff = |q(bf16_s0) - q(fp32_s0)|;
"same within noise" when diff <= 1.5 x max(seed_spread, 1% of |q(fp32_s0)|), else "degraded" (bf16
worse) or "better". One seed pair is a coarse noise estimate: a "degraded" near the line deserves a
rerun with another `--kimg` or more samples before a family's `cpu_bf16` is turned off.

Resuming (`--reuse`): an arm whose run folder holds a checkpoint at the full budget and a
bench_timing.json written with the same train command is not retrained, and an evaluation whose
bench_eval.json belongs to that checkpoint and was made with the same eval command is not redone.
Without --reuse every arm is trained afresh (--overwrite).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FACEGAN = [str(Path(sys.executable).parent / "facegan")]
ARMS = {"fp32_s0": ("fp32", False, 0), "fp32_s1": ("fp32", False, 1), "bf16_s0": ("bf16", True, 0)}
TIMING_JSON = "bench_timing.json"
EVAL_JSON = "bench_eval.json"
NOISE_FACTOR = 1.5
NOISE_FLOOR = 0.01
# Non-generative (or not judged by samples) families: their own end-of-run number in losses.jsonl.
OWN_METRIC = {"classifier": ("eval/val/mean_acc", True), "predictor": ("eval/image_mse", False)}
FACE_METRIC = ("fid_face", False)


# ============================================================================ verdict (pure)

def verdict(fp32_s0: float | None, fp32_s1: float | None, bf16_s0: float | None, *, higher_is_better: bool,
            factor: float = NOISE_FACTOR, floor: float = NOISE_FLOOR) -> dict[str, Any]:
    """bf16's quality against fp32's seed-to-seed noise.

    seed_spread = |fp32_s0 - fp32_s1|, diff = |bf16_s0 - fp32_s0|, tolerance = factor x
    max(seed_spread, floor x |fp32_s0|). "same within noise" when diff <= tolerance, else "degraded"
    when bf16 is on the worse side (higher for a lower-is-better metric), else "better";
    "incomplete" when a value is missing (or not finite).
    """
    values = (fp32_s0, fp32_s1, bf16_s0)
    if any(v is None or v != v or v in (float("inf"), float("-inf")) for v in values):
        return {"seed_spread": None, "diff": None, "tolerance": None, "verdict": "incomplete"}
    a, b, c = (float(v) for v in values)  # type: ignore[arg-type]
    spread, diff = abs(a - b), abs(c - a)
    tol = factor * max(spread, floor * abs(a))
    if diff <= tol:
        word = "same within noise"
    else:
        worse = c < a if higher_is_better else c > a
        word = "degraded" if worse else "better"
    return {"seed_spread": spread, "diff": diff, "tolerance": tol, "verdict": word}


def speedup(fp32_seconds: float | None, bf16_seconds: float | None) -> float | None:
    if not fp32_seconds or not bf16_seconds:
        return None
    return fp32_seconds / bf16_seconds


# ============================================================================ results -> table / JSON

def summarise_family(family: str, arms: dict[str, dict[str, Any]], *, metric: str,
                     higher_is_better: bool) -> dict[str, Any]:
    """One family's row from its arms' results ({arm: {"train_seconds", "quality", ...}})."""
    q = {a: (arms.get(a) or {}).get("quality") for a in ARMS}
    t = {a: (arms.get(a) or {}).get("train_seconds") for a in ARMS}
    row: dict[str, Any] = {"family": family, "metric": metric, "higher_is_better": higher_is_better,
                           "train_seconds": t, "quality": q, "speedup": speedup(t["fp32_s0"], t["bf16_s0"]),
                           "arms": arms}
    row.update(verdict(q["fp32_s0"], q["fp32_s1"], q["bf16_s0"], higher_is_better=higher_is_better))
    return row


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _qfmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | fp32 s | bf16 s | speed-up | quality metric | fp32 s0 | fp32 s1 | bf16 s0 | verdict |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        t, q = r["train_seconds"], r["quality"]
        arrow = "higher better" if r["higher_is_better"] else "lower better"
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"| {r['family']} | {_fmt(t['fp32_s0'], '.1f')} | {_fmt(t['bf16_s0'], '.1f')} | {sp} | "
                     f"{r['metric']} ({arrow}) | {_qfmt(q['fp32_s0'])} | {_qfmt(q['fp32_s1'])} | "
                     f"{_qfmt(q['bf16_s0'])} | {r['verdict']} |")
    return "\n".join(lines)


def report_doc(rows: list[dict[str, Any]], skipped: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "families": {r["family"]: r for r in rows}, "skipped": skipped}


# ============================================================================ arms

@dataclass
class Arm:
    family: str
    name: str
    config: Path
    run_dir: Path
    sets: list[str]
    metric: str
    higher_is_better: bool
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family}/{self.name}"

    def train_cmd(self) -> list[str]:
        return [*FACEGAN, "train", str(self.config), "--no-ray", "--no-progress", "--overwrite",
                *[a for s in self.sets for a in ("--set", s)]]


# Families with no celeba64 config train from this one on the same CelebA shards.
OTHER_CONFIGS = {"progressive": "configs/progressive_utkface64.yaml"}


def config_path(family: str) -> Path:
    own = REPO / "configs" / f"{family}_celeba64.yaml"
    return own if own.is_file() or family not in OTHER_CONFIGS else REPO / OTHER_CONFIGS[family]


def celeba64_families() -> list[str]:
    from facegan.families import FAMILIES

    return [f for f in FAMILIES if config_path(f).is_file()]


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [f"{prefix}={json.dumps(value) if isinstance(value, (list, dict, str)) else value}"]


def family_sets(family: str, args: argparse.Namespace) -> tuple[list[str] | None, str]:
    """(the family's extra overrides, "") or (None, why it is skipped)."""
    from facegan.config import read_yaml
    from facegan.families import FAMILIES, option_keys

    fam = FAMILIES[family]
    keys = option_keys(fam)
    sets: list[str] = []
    if "train.grid_size" in keys:
        sets.append("train.grid_size=16")       # the tick's sample grid: small, the same on every arm
    if family == "classifier":
        sets.append('eval.splits=["val"]')
    smoke = _flatten("", fam.smoke) if args.smoke else []
    raw = read_yaml(config_path(family))
    if family == "overlay" and not any(s.startswith("gan.attr_source=") for s in smoke + args.set):
        gan = raw.get("gan") or {}
        if (gan.get("attr_source") or "classifier") == "classifier":
            clf = args.classifier or gan.get("classifier") or ""
            if args.classifier:
                sets.append(f"gan.classifier={Path(clf).resolve()}")
            elif not clf or not (REPO / clf).exists():
                return None, ("needs an attribute classifier checkpoint (gan.attr_source classifier): pass "
                              f"--classifier (configs' {clf or 'none'} does not exist)")
            else:
                sets.append(f"gan.classifier={(REPO / clf).resolve()}")
    if family == "predictor":
        if args.predictor_generator:
            sets.append(f"gan.generator={Path(args.predictor_generator).resolve()}")
        elif not any(s.startswith("gan.generator=") for s in smoke + args.set):
            return None, "needs a trained GAN generator (its frozen G): pass --predictor-generator RUN_OR_CHECKPOINT"
        sets.append(f"gan.switch_kimg={args.kimg / 2:g}")   # latent loss first half, image loss second
    if family == "progressive" and not args.smoke:
        # The stage schedule scaled to the budget (8 -> 16 -> 32 px within it), no video.
        sets += [f"gan.stable_kimg={args.kimg / 4:g}", f"gan.fade_kimg={args.kimg / 4:g}", "train.video=false"]
    user = []
    for s in args.set:
        fam_name, sep, rest = s.partition(":")
        if sep and "=" not in fam_name:
            if fam_name == family:
                user.append(rest)
        else:
            user.append(s)
    valid = {k.split(".", 1)[0] for k in keys} | {"data", "augment", "ray", "wandb"}
    bad = [s for s in user if s.split("=", 1)[0].split(".", 1)[0] not in valid]
    if bad:
        raise SystemExit(f"error: --set {bad[0]}: no such section for {family}")
    return sets + smoke + user, ""


def build_arms(args: argparse.Namespace, out: Path) -> tuple[list[Arm], dict[str, str]]:
    from facegan.families import FAMILIES

    known = celeba64_families()
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else known
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"error: --families: unknown {unknown}; known: {sorted(FAMILIES)}")
    arms: list[Arm] = []
    skipped: dict[str, str] = {}
    kimg = args.kimg
    for family in families:
        if family not in known:
            skipped[family] = f"no configs/{family}_celeba64.yaml"
            continue
        extra, why = family_sets(family, args)
        if extra is None:
            skipped[family] = why
            continue
        metric, higher = OWN_METRIC.get(family, FACE_METRIC)
        if family not in OWN_METRIC and FAMILIES[family].generator is None:
            skipped[family] = "no generator and no quality number of its own known to this benchmark"
            continue
        common = [f"data.shards={Path(args.shards).resolve()}", f"data.batch_size={args.batch_size}",
                  f"data.num_workers={args.data_workers}", f"train.num_threads={args.threads}",
                  f"train.total_kimg={kimg:g}", f"train.tick_kimg={kimg / 4:g}", f"train.checkpoint_kimg={kimg:g}",
                  "train.keep_checkpoints=1", "eval.every_kimg=0", "wandb.enabled=false"]
        for name, (prec, cl, seed) in ARMS.items():
            run_dir = out / family / name
            own = [f"train.precision={prec}", f"train.channels_last={str(cl).lower()}", f"train.seed={seed}",
                   f"train.out_dir={run_dir}"]
            arms.append(Arm(family, name, config_path(family), run_dir,
                            common + extra + own, metric, higher))
    return arms, skipped


# ============================================================================ running

def final_checkpoint(run_dir: Path, kimg: float) -> tuple[Path, dict[str, Any]] | None:
    """The latest checkpoint of a run and its meta, if it reached the budget."""
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*")) if (run_dir / "checkpoints").is_dir() else []
    for ckpt in reversed(ckpts):
        meta_path = ckpt / "meta.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        if int(meta.get("images_seen", 0)) >= int(round(kimg * 1000)):
            return ckpt, meta
        return None
    return None


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    from facegan.stats import read_log

    return read_log(run_dir / "losses.jsonl")


def tick_rates(rows: list[dict[str, Any]]) -> list[float]:
    return [r["img_per_sec"] for r in rows if r.get("kind") == "tick" and "img_per_sec" in r]


class Console:
    def __init__(self, total: int) -> None:
        self.lock, self.done, self.total, self.t0 = threading.Lock(), 0, total, time.perf_counter()

    def line(self, text: str, *, count: bool = True) -> None:
        with self.lock:
            self.done += count
            print(f"[{self.done}/{self.total} {time.perf_counter() - self.t0:6.0f}s] {text}", flush=True)


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", RAY_USAGE_STATS_ENABLED="0")
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def train_arm(arm: Arm, args: argparse.Namespace, logs: Path, console: Console) -> None:
    cmd = arm.train_cmd()
    timing_path = arm.run_dir / TIMING_JSON
    if args.reuse or args.report:
        found = final_checkpoint(arm.run_dir, args.kimg)
        if found and timing_path.is_file():
            timing = json.loads(timing_path.read_text())
            if timing.get("cmd") == cmd[1:] and timing.get("checkpoint") == str(found[0]):
                arm.result.update(timing)
                console.line(f"{arm.label}: reused ({timing['train_seconds']:.1f} s training)")
                return
        if args.report:
            arm.result["error"] = "not trained (or not with these settings)"
            console.line(f"{arm.label}: no finished run")
            return
    log_path = logs / f"{arm.family}_{arm.name}.train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=thread_env(args.threads)).returncode
    wall = time.perf_counter() - t0
    found = final_checkpoint(arm.run_dir, args.kimg)
    if rc != 0 or found is None:
        arm.result["error"] = f"train exit {rc}" + ("" if found else ", no final checkpoint") + f" (log: {log_path})"
        console.line(f"{arm.label}: FAILED, {arm.result['error']}")
        return
    ckpt, meta = found
    rows = read_rows(arm.run_dir)
    rates = tick_rates(rows)
    resolved = {}
    if (arm.run_dir / "config.json").is_file():
        resolved = json.loads((arm.run_dir / "config.json").read_text()).get("resolved") or {}
    prec, cl, _ = ARMS[arm.name]
    timing = {"arm": arm.name, "family": arm.family, "cmd": cmd[1:], "checkpoint": str(ckpt),
              "train_seconds": float(meta.get("train_seconds") or wall), "wall_seconds": wall,
              "images_seen": meta.get("images_seen"), "steps": meta.get("step"),
              "img_per_sec_ticks": rates, "img_per_sec_median": statistics.median(rates) if rates else None,
              "resolved": resolved, "resolved_ok": resolved.get("precision", prec) == prec
              and resolved.get("channels_last", cl) == cl,
              "log": str(log_path), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = timing_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timing, indent=1))
    os.replace(tmp, timing_path)
    arm.result.update(timing)
    warn = "" if timing["resolved_ok"] else f"  WARNING: the run resolved to {resolved}"
    console.line(f"{arm.label}: trained in {timing['train_seconds']:.1f} s (wall {wall:.1f} s){warn}")


def own_quality(arm: Arm) -> None:
    """classifier / predictor: the metric from the last row of losses.jsonl that has it."""
    rows = [r for r in read_rows(arm.run_dir) if arm.metric in r]
    if rows:
        arm.result["quality"] = float(rows[-1][arm.metric])
    else:
        arm.result["error"] = f"{arm.run_dir}/losses.jsonl has no {arm.metric}"


def eval_arm(arm: Arm, args: argparse.Namespace, logs: Path, console: Console) -> None:
    if "checkpoint" not in arm.result:
        return
    if arm.metric != FACE_METRIC[0]:
        own_quality(arm)
        if "quality" in arm.result:
            console.line(f"{arm.label}: {arm.metric} = {arm.result['quality']:.4g} (from the run)")
        return
    out_json = arm.run_dir / EVAL_JSON
    cmd = [*FACEGAN, "eval", "--checkpoint", arm.result["checkpoint"], "--shards", str(Path(args.shards).resolve()),
           "--features", "face", "--num-samples", str(args.num_samples), "--num-real", str(args.num_real),
           "--eval-split", "val", "--metrics", "fid,face_detection", "--no-ema", "--no-progress", "--json", str(out_json)]
    stamp = arm.run_dir / (EVAL_JSON + ".cmd")
    if (args.reuse or args.report) and out_json.is_file() and stamp.is_file() and \
            json.loads(stamp.read_text()) == cmd[1:]:
        doc = json.loads(out_json.read_text())
        reused = True
    elif args.report:
        arm.result["error"] = "not evaluated (or not with these settings)"
        console.line(f"{arm.label}: no evaluation")
        return
    else:
        reused = False
        out_json.unlink(missing_ok=True)
        log_path = logs / f"{arm.family}_{arm.name}.eval.log"
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env=thread_env(args.threads)).returncode
        if rc != 0 or not out_json.is_file():
            arm.result["error"] = f"eval exit {rc} (log: {log_path})"
            console.line(f"{arm.label}: eval FAILED, {arm.result['error']}")
            return
        stamp.write_text(json.dumps(cmd[1:]))
        doc = json.loads(out_json.read_text())
        doc["_seconds"] = time.perf_counter() - t0
    scores = doc.get("scores") or {}
    if FACE_METRIC[0] not in scores:
        arm.result["error"] = f"{out_json} has no scores.{FACE_METRIC[0]}"
        console.line(f"{arm.label}: {arm.result['error']}")
        return
    arm.result.update(quality=float(scores[FACE_METRIC[0]]), face_detection_rate=scores.get("face_detection_rate"),
                      face_detection_rate_real=scores.get("face_detection_rate_real"),
                      num_fake=scores.get("num_fake"), num_real_eval=scores.get("num_real_eval"),
                      eval_json=str(out_json))
    console.line(f"{arm.label}: fid_face = {arm.result['quality']:.4f}" + (" (reused)" if reused else
                                                                          f" (eval {doc.get('_seconds', 0):.0f} s)"))


# ============================================================================ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="labelled shard set (train and val splits) at the configs' resolution")
    ap.add_argument("--out", required=True, help="folder of the runs (OUT/FAMILY/ARM) and the logs (OUT/logs)")
    ap.add_argument("--families", default="", help="comma-separated subset (default: every family with a "
                                                   "configs/<family>_celeba64.yaml)")
    ap.add_argument("--kimg", type=float, default=3.0, help="images-seen budget per arm, thousands (default 3)")
    ap.add_argument("--jobs", type=int, default=2, help="arms at a time (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm (default 1; jobs x threads <= cores)")
    ap.add_argument("--batch-size", type=int, default=64, help="data.batch_size of every arm (default 64)")
    ap.add_argument("--data-workers", type=int, default=0, help="data.num_workers (default 0: decode in-process)")
    ap.add_argument("--num-samples", type=int, default=500, help="generated images per fid_face (default 500)")
    ap.add_argument("--num-real", type=int, default=2000, help="at most this many val faces per fid_face (default 2000)")
    ap.add_argument("--classifier", default="", help="attribute classifier checkpoint or run (overlay's o)")
    ap.add_argument("--predictor-generator", default="", help="trained GAN run or checkpoint (the predictor's frozen G)")
    ap.add_argument("--set", action="append", default=[], metavar="[FAMILY:]KEY=VALUE",
                    help="extra override for every arm (FAMILY: prefix: that family's arms only); repeatable")
    ap.add_argument("--smoke", action="store_true", help="each family's smoke-size nets (Family.smoke): toy runs")
    ap.add_argument("--reuse", action="store_true", help="keep finished arms and evaluations made with the same commands")
    ap.add_argument("--report", action="store_true", help="train and evaluate nothing: report what --out holds")
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.threads < 0 or args.kimg <= 0:
        raise SystemExit("error: --jobs >= 1, --threads >= 0 and --kimg > 0 expected")

    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    arms, skipped = build_arms(args, out)
    for family, why in skipped.items():
        print(f"skipped {family}: {why}", flush=True)
    if not arms:
        raise SystemExit("error: no family left to benchmark")
    console = Console(2 * len(arms))
    print(f"{len(arms)} arms ({len(arms) // 3} families x fp32_s0, fp32_s1, bf16_s0) at {args.kimg:g} kimg, "
          f"{args.jobs} at a time, {args.threads} thread(s) each; logs in {logs}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda a: train_arm(a, args, logs, console), arms))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda a: eval_arm(a, args, logs, console), arms))

    rows = []
    for family in dict.fromkeys(a.family for a in arms):
        mine = [a for a in arms if a.family == family]
        rows.append(summarise_family(family, {a.name: a.result for a in mine}, metric=mine[0].metric,
                                     higher_is_better=mine[0].higher_is_better))
    print()
    print(markdown_table(rows))
    for r in rows:
        errors = {a: res["error"] for a, res in r["arms"].items() if res.get("error")}
        for a, e in errors.items():
            print(f"  {r['family']}/{a}: {e}")
    for family, why in skipped.items():
        print(f"  skipped {family}: {why}")
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    if args.json:
        Path(args.json).write_text(json.dumps(report_doc(rows, skipped, settings), indent=1))
        print(f"wrote {args.json}")
    failed = any(r["verdict"] == "incomplete" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
