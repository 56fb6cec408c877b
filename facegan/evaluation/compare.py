"""Several runs side by side: the same scores, attribute rates and a sample grid for each, on one page.

    facegan compare runs/dcgan runs/wgangp runs/vae --shards data/celeba64 \\
        --classifier runs/classifier_celeba64 --out compare.html      # + compare.json, compare.csv

Any family with a generator can be compared (DCGAN, WGAN-GP, the VAE's decoder, the attribute-
controlled families with attribute rows drawn from the shards' val labels). Every run is scored
exactly as `facegan eval` scores a checkpoint (facegan.evaluation.offline), with the same seed, so
run i's images come from the same latents as run j's wherever the families share a latent: fid_attr,
kid_attr, precision/recall in the attribute classifier's features against the val split, MS-SSIM
diversity, memorisation against train. The real features are extracted once for all runs.
With the face package installed (`face`: auto, the default), also dlib's face-identity scores of
`facegan eval`: fid_face, kid_face, precision/recall in face-descriptor space, identity diversity
against the real images' own, and the face detector's rate against the real rate.

Beside them, for the CelebA report's attributes (Eyeglasses, Bangs, Wearing_Hat, Wavy_Hair by
default): the share of each run's generated faces the classifier finds with the attribute
(probability > 0.5), against the real rate in the val split's labels and against the classifier's
own rate on those real val images (the part of a gap that is the classifier's, not the generator's).
An attribute the classifier was not trained on (constant in its training labels) is reported as
missing, not as the training rate the classifier would echo.

The page is self-contained (images inlined as base64 PNG, no scripts or styles from elsewhere);
the grids are also written as PNG files beside it, the numbers as JSON and CSV.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from facegan.checkpoint import find_checkpoint, read_meta
from facegan.config import ConfigError
from facegan.evaluation.offline import (EvalRequest, Share, _images_and_features, chunks_for, draw_chunk,
                                        face_fields, generator_attrs, resolve_classifier, statistics)

REPORT_ATTRS = ("Eyeglasses", "Bangs", "Wearing_Hat", "Wavy_Hair")
# (result key, column title, lower is better? None: neither) in the page's score table, in this order.
SCORE_COLUMNS = (("fid_attr", "FID (attr)", True), ("kid_attr", "KID (attr)", True),
                 ("precision_attr", "precision", False), ("recall_attr", "recall", False),
                 ("ms_ssim", "MS-SSIM", True), ("memorisation_ratio_attr", "memorisation ratio", None),
                 ("fid_face", "FID (face)", True), ("kid_face", "KID (face)", True),
                 ("precision_face", "precision (face)", False), ("recall_face", "recall (face)", False),
                 ("identity_diversity", "identity diversity", None),
                 ("face_detection_rate", "faces detected", False))
MAX_RUNS = 32
MIN_IMAGES = 10                   # precision/recall needs k + 1 = 4 neighbours, FID a covariance
MAX_SAMPLES = 50_000
MAX_REAL = 200_000
PROB_THRESHOLD = 0.5


@dataclass(kw_only=True)
class CompareRequest:
    """What `facegan compare` scores; validated before any checkpoint is loaded."""

    runs: list[str]
    shards: str
    classifier: str
    num_samples: int = 1000           # generated images per run
    num_real: int = 2000              # at most this many real images per split
    grid_size: int = 36               # images in each run's grid (the first of its samples)
    attrs: list[str] = field(default_factory=lambda: list(REPORT_ATTRS))
    labels: list[str] = field(default_factory=list)   # display names ([]: each run's folder name)
    eval_split: str = "val"
    seed: int = 0
    batch_size: int = 64
    use_ema: bool = True
    face: str = "auto"                # face-identity scores: auto (when installed), on, off

    def __post_init__(self) -> None:
        if self.face not in ("auto", "on", "off"):
            raise ConfigError(f"compare.face (--face): expected auto, on or off, got {self.face!r}")
        if not self.runs or len(self.runs) > MAX_RUNS:
            raise ConfigError(f"compare: expected 1..{MAX_RUNS} runs, got {len(self.runs)}")
        for run in self.runs:
            if not Path(run).exists():
                raise ConfigError(f"compare: run {run} does not exist")
        for name, value, top in (("num_samples", self.num_samples, MAX_SAMPLES), ("num_real", self.num_real, MAX_REAL),
                                 ("grid_size", self.grid_size, 256), ("batch_size", self.batch_size, 4096)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"compare.{name}: expected an integer in 1..{top}, got {value!r}")
        for name in ("num_samples", "num_real"):
            if getattr(self, name) < MIN_IMAGES:
                raise ConfigError(f"compare.{name} (--{name.replace('_', '-')}): expected at least {MIN_IMAGES} images "
                                  f"(precision/recall and FID need them), got {getattr(self, name)}")
        if not self.attrs:
            raise ConfigError("compare.attrs: expected at least one attribute name")
        if self.grid_size > self.num_samples:
            raise ConfigError(f"compare.grid_size: {self.grid_size} is more than num_samples ({self.num_samples})")
        if self.labels and len(self.labels) != len(self.runs):
            raise ConfigError(f"compare.labels: {len(self.labels)} labels for {len(self.runs)} runs")
        if not self.classifier:
            raise ConfigError("compare: --classifier is required (the attribute classifier whose features give "
                              "fid_attr and whose predictions give the attribute rates)")
        if not Path(self.classifier).exists():
            raise ConfigError(f"compare.classifier: {self.classifier} does not exist")

    def run_labels(self) -> list[str]:
        if self.labels:
            return list(self.labels)
        names = [Path(r).resolve().name for r in self.runs]
        names = [Path(r).resolve().parents[1].name if n.startswith("ckpt-") else n for n, r in zip(names, self.runs)]
        return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


# ============================================================================ scoring

def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def attribute_rates(classifier: torch.nn.Module, images_u8: torch.Tensor, attrs: list[str], *,
                    batch_size: int) -> dict[str, float | None]:
    """Share of `images_u8` the classifier finds with each attribute (probability > 0.5); None for an
    attribute it does not know or was not trained on."""
    from facegan.families.classifier.scoring import attribute_probs
    from facegan.images import as_float_images

    names = list(getattr(classifier, "attr_names", []))
    scored = set(getattr(classifier, "scored_attrs", names))
    probs = torch.cat([attribute_probs(classifier, as_float_images(b)) for b in images_u8.split(batch_size)])
    out: dict[str, float | None] = {}
    for a in attrs:
        if a in names and a in scored:
            out[a] = float((probs[:, names.index(a)] > PROB_THRESHOLD).float().mean())
        else:
            out[a] = None
    return out


def label_rates(shards: str, split: str, attrs: list[str]) -> tuple[dict[str, float | None], int]:
    """Each attribute's rate among the labelled faces of a shard split (None: not labelled)."""
    from facegan.data.labels import label_counts
    from facegan.data.stream import ShardSet

    shard_set = ShardSet.open(shards)
    pos, n = label_counts(shard_set, split)
    names = list(shard_set.attr_names)
    return {a: (float(pos[names.index(a)]) / n if a in names and n else None) for a in attrs}, int(n)


def _fakes(gen: Any, req: EvalRequest, extractor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, features) of a generator's set, drawn as `facegan eval` draws it."""
    attrs = generator_attrs(gen, req.shards)
    chunks = (draw_chunk(gen.G, i, seed=req.seed, num=n, steps=gen.steps, attrs=attrs)
              for i, n in chunks_for(req.num_samples))
    return _images_and_features(extractor, chunks, batch_size=req.batch_size)


def compare_runs(req: CompareRequest) -> dict[str, Any]:
    """Score every run of `req` (one process); returns the JSON-able result `write_compare` renders."""
    from facegan.data.stream import ShardSet
    from facegan.families.classifier.scoring import load_classifier
    from facegan.families.loading import load_generator
    from facegan.metrics import attr_extractor, shard_features, shard_images

    shard_set = ShardSet.open(req.shards)
    height, width = shard_set.resolution
    for split in (req.eval_split, "train"):
        if shard_set.count(split) < MIN_IMAGES:
            raise ConfigError(f"compare: the {split} split of {req.shards} holds {shard_set.count(split)} images; "
                              f"comparing needs at least {MIN_IMAGES}")
    # Every run's generated set and the real val images are kept as uint8 while it is scored.
    need = (req.num_samples + req.num_real + req.grid_size * len(req.runs)) * 3 * height * width
    if need > physical_memory() // 2:
        raise ConfigError(f"compare: --num-samples {req.num_samples} and --num-real {req.num_real} at {height}x{width} "
                          f"need {need / 2**30:.1f} GiB of images in memory; this machine has "
                          f"{physical_memory() / 2**30:.1f} GiB: ask for fewer")
    classifier = load_classifier(resolve_classifier(req.classifier))
    extractor = attr_extractor(classifier=classifier)
    checkpoints = [find_checkpoint(r) for r in req.runs]
    for run, ckpt in zip(req.runs, checkpoints):   # refuse a mismatched run before any scoring
        gen = load_generator(ckpt, ema=req.use_ema)
        if tuple(gen.resolution) != (height, width):
            raise ConfigError(f"compare: {run} makes {gen.resolution[0]}x{gen.resolution[1]} images but the shards "
                              f"in {req.shards} are {height}x{width}")

    t0 = time.perf_counter()
    eval_images, eval_feats = _images_and_features(
        extractor, shard_images(shards_dir=req.shards, split=req.eval_split, max_images=req.num_real,
                                batch_size=req.batch_size), batch_size=req.batch_size)
    train_feats = shard_features(extractor, shards_dir=req.shards, split="train", max_images=req.num_real,
                                 batch_size=req.batch_size)
    real_rates, num_labelled = label_rates(req.shards, req.eval_split, req.attrs)
    face_req = EvalRequest(shards=req.shards, baseline="random", classifier=req.classifier, face=req.face,
                           batch_size=req.batch_size)
    real_face = face_fields(face_req, eval_images=eval_images)
    real = {"label_rates": real_rates, "num_labelled": num_labelled,
            "classifier_rates": attribute_rates(classifier, eval_images, req.attrs, batch_size=req.batch_size),
            "num_images": int(eval_images.shape[0]), "grid": eval_images[: req.grid_size]}

    runs = []
    for label, run, ckpt in zip(req.run_labels(), req.runs, checkpoints):
        ereq = EvalRequest(shards=req.shards, checkpoint=str(ckpt), num_samples=req.num_samples, features="attr",
                           classifier=req.classifier, num_real=req.num_real, eval_split=req.eval_split,
                           batch_size=req.batch_size, seed=req.seed, use_ema=req.use_ema,
                           ms_ssim_pairs=min(1000, req.num_samples), kid_subset_size=min(1000, req.num_samples),
                           face=req.face)
        gen = load_generator(ckpt, ema=req.use_ema)
        fake_images, fake_feats = _fakes(gen, ereq, extractor)
        share = Share(fake_feats=fake_feats, fake_images=fake_images, train_feats=train_feats,
                      eval_feats=eval_feats, eval_images=eval_images, **real_face,
                      **face_fields(ereq, fake_images=fake_images))
        disc = gen.run.nets.get(gen.family.discriminator) if gen.family.discriminator else None
        scores = statistics(ereq, share, disc=disc)
        del gen
        meta = read_meta(ckpt)
        runs.append({
            "label": label, "run": run, "checkpoint": str(ckpt),
            "family": meta.get("family") or (meta.get("config") or {}).get("model", {}).get("family", ""),
            "kimg": meta.get("kimg"), "images_seen": meta.get("images_seen"), "step": meta.get("step"),
            "train_seconds": meta.get("train_seconds"), "world_size": meta.get("world_size"),
            "scores": scores,
            "attr_rates": attribute_rates(classifier, fake_images, req.attrs, batch_size=req.batch_size),
            "grid": fake_images[: req.grid_size],
        })
    return {"request": asdict(req), "shards": {"location": req.shards, "resolution": [height, width]},
            "classifier": str(resolve_classifier(req.classifier)), "attrs": list(req.attrs), "real": real,
            "runs": runs, "seconds": time.perf_counter() - t0}


# ============================================================================ output

def _fmt(value: Any, *, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _json_ready(result: dict[str, Any], grids: dict[str, Path]) -> dict[str, Any]:
    doc = json.loads(json.dumps({k: v for k, v in result.items() if k not in ("runs", "real")}))
    doc["real"] = {k: v for k, v in result["real"].items() if k != "grid"}
    doc["real"]["grid_png"] = str(grids["real"])
    doc["runs"] = [{**{k: v for k, v in r.items() if k != "grid"}, "grid_png": str(grids[r["label"]])}
                   for r in result["runs"]]
    return doc


def write_compare(result: dict[str, Any], out_html: str | Path) -> dict[str, Path]:
    """compare.html (self-contained), compare.json, compare.csv and the grids' PNGs beside it."""
    from facegan.images import save_grid_png

    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    grid_dir = out_html.with_name(out_html.stem + "_grids")
    grids: dict[str, Path] = {"real": save_grid_png(result["real"]["grid"], grid_dir / "real.png")}
    for i, r in enumerate(result["runs"]):
        grids[r["label"]] = save_grid_png(r["grid"], grid_dir / f"run{i:02d}.png")

    doc = _json_ready(result, grids)
    json_path = out_html.with_suffix(".json")
    json_path.write_text(json.dumps(doc, indent=1, sort_keys=True))

    csv_path = out_html.with_suffix(".csv")
    attrs = result["attrs"]
    score_keys = sorted({k for r in result["runs"] for k in r["scores"]})
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "family", "checkpoint", "kimg", "images_seen", "train_seconds", *score_keys,
                    *(f"rate/{a}" for a in attrs)])
        for r in result["runs"]:
            w.writerow([r["label"], r["family"], r["checkpoint"], r["kimg"], r["images_seen"], r["train_seconds"],
                        *(r["scores"].get(k, "") for k in score_keys),
                        *("" if r["attr_rates"][a] is None else r["attr_rates"][a] for a in attrs)])
        real = result["real"]
        w.writerow([f"real {result['request']['eval_split']} (labels)", "", "", "", "", "",
                    *("" for _ in score_keys),
                    *("" if real["label_rates"][a] is None else real["label_rates"][a] for a in attrs)])
        w.writerow([f"real {result['request']['eval_split']} (classifier)", "", "", "", "", "",
                    *("" for _ in score_keys),
                    *("" if real["classifier_rates"][a] is None else real["classifier_rates"][a] for a in attrs)])

    out_html.write_text(render_html(result, grids))
    return {"html": out_html, "json": json_path, "csv": csv_path, "grids": grid_dir}


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;margin-bottom:16px}
table{border-collapse:collapse;margin:8px 0} th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
td.best{font-weight:700;background:#eaf6ea}
.grids{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;text-align:center} figure img{image-rendering:pixelated;border:1px solid #ccc;width:320px}
figcaption{font-size:13px;color:#444;margin-top:4px}
.note{color:#666;font-size:12px}
"""


def render_html(result: dict[str, Any], grids: dict[str, Path]) -> str:
    """The page: a score table, an attribute-rate table and the grids, images inlined."""
    esc = html.escape
    req, runs, real, attrs = result["request"], result["runs"], result["real"], result["attrs"]
    split = req["eval_split"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>facegan compare</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>facegan compare</h1>",
             f"<div class='sub'>{len(runs)} runs on {esc(result['shards']['location'])} "
             f"({result['shards']['resolution'][0]}x{result['shards']['resolution'][1]}); {req['num_samples']} "
             f"generated images per run (seed {req['seed']}{', EMA generators' if req['use_ema'] else ''}) against "
             f"{real['num_images']} real {esc(split)} images; features and attributes from the classifier "
             f"{esc(result['classifier'])}</div>"]

    # Scores: the best of a column marked where it has a direction and not every run holds it.
    cols = [(k, t, low) for k, t, low in SCORE_COLUMNS if any(k in r["scores"] for r in runs)]
    best: dict[str, float] = {}
    for k, _, low in cols:
        vals = [r["scores"][k] for r in runs if isinstance(r["scores"].get(k), float) and math.isfinite(r["scores"][k])]
        if low is not None and len(vals) > 1:
            top = min(vals) if low else max(vals)
            if vals.count(top) < len(vals):
                best[k] = top
    parts.append("<h2>Scores</h2><table id='scores'><tr><th>run</th><th>family</th><th>images seen (kimg)</th>"
                 "<th>train time</th>" + "".join(f"<th>{esc(t)}{'' if low is None else ' ↓' if low else ' ↑'}</th>"
                                                   for _, t, low in cols)
                 + "</tr>")
    for r in runs:
        cells = "".join(
            f"<td{' class=best' if k in best and r['scores'].get(k) == best[k] else ''} data-value="
            f"'{_fmt(r['scores'].get(k), digits=8)}'>{_fmt(r['scores'].get(k))}</td>" for k, _, _ in cols)
        parts.append(f"<tr data-run='{esc(r['label'])}'><td>{esc(r['label'])}</td><td>{esc(str(r['family']))}</td>"
                     f"<td>{_fmt(r['kimg'])}</td><td>{_duration(r['train_seconds'])}</td>{cells}</tr>")
    parts.append("</table>")
    ms_real = next((r["scores"].get("ms_ssim_real") for r in runs if "ms_ssim_real" in r["scores"]), None)
    parts.append("<div class='note'>FID/KID/precision/recall in the attribute classifier's features (not comparable "
                 f"with published Inception FIDs); MS-SSIM of generated pairs (lower: more diverse; real pairs: "
                 f"{_fmt(ms_real)}); memorisation ratio: generated-to-nearest-train over held-out-to-nearest-train "
                 "distance (well below 1: copying). Train time from the checkpoint's meta.</div>")
    if any("fid_face" in r["scores"] for r in runs):
        first = next(r["scores"] for r in runs if "fid_face" in r["scores"])
        parts.append("<div class='note' id='face-note'>Face columns: dlib's face-recognition descriptor (ResNet, "
                     "128-d; facegan.metrics.face), not Inception: FID/KID/precision/recall (face) compare identity "
                     "statistics with the real images', and are comparable only with other facegan face scores at "
                     "the same resolution. Identity diversity: mean descriptor distance between generated faces "
                     f"(real {esc(split)} images: {_fmt(first.get('identity_diversity_real'))}; under 0.6 is "
                     "dlib's same person). Faces detected: share dlib's HOG detector finds (real: "
                     f"{_pct(first.get('face_detection_rate_real'))}).</div>")

    # Attribute rates.
    parts.append(f"<h2>Attributes</h2><table id='attrs'><tr><th>attribute</th><th>real {esc(split)} (labels)</th>"
                 f"<th>real {esc(split)} (classifier)</th>" + "".join(f"<th>{esc(r['label'])}</th>" for r in runs)
                 + "</tr>")
    for a in attrs:
        parts.append(f"<tr data-attr='{esc(a)}'><td>{esc(a)}</td><td>{_pct(real['label_rates'][a])}</td>"
                     f"<td>{_pct(real['classifier_rates'][a])}</td>"
                     + "".join(f"<td>{_pct(r['attr_rates'][a])}</td>" for r in runs) + "</tr>")
    parts.append("</table><div class='note'>Share of faces the classifier gives the attribute (probability &gt; "
                 f"{PROB_THRESHOLD}); labels: the {esc(split)} split's annotations ({real['num_labelled']} faces). "
                 "– : the classifier was not trained on the attribute, or the shards do not label it.</div>")

    # Grids.
    parts.append("<h2>Samples</h2><div class='grids' id='grids'>")
    for r in runs:
        parts.append(f"<figure data-run='{esc(r['label'])}'><img alt='{esc(r['label'])} samples' "
                     f"src='data:image/png;base64,{_png_b64(grids[r['label']])}'><figcaption>{esc(r['label'])} "
                     f"({esc(str(r['family']))}, {_fmt(r['kimg'])} kimg)</figcaption></figure>")
    parts.append(f"<figure data-run='real'><img alt='real {esc(split)} images' "
                 f"src='data:image/png;base64,{_png_b64(grids['real'])}'><figcaption>real {esc(split)} images"
                 "</figcaption></figure></div>")
    # Marks the page once every inlined image has decoded (a browser check reads these).
    parts.append("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.imagesTotal=i.length;"
                 "document.body.dataset.imagesDecoded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def format_compare_table(result: dict[str, Any]) -> str:
    """The score and attribute tables as plain text (what `facegan compare` prints)."""
    runs, attrs, real = result["runs"], result["attrs"], result["real"]
    cols = [(k, t) for k, t, _ in SCORE_COLUMNS if any(k in r["scores"] for r in runs)]
    w = max(12, *(len(r["label"]) for r in runs))
    head = f"{'run':<{w}} {'family':>10} {'kimg':>8} {'time':>8} " + " ".join(f"{k:>12}" for k, _ in cols)
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r['label']:<{w}} {str(r['family']):>10} {_fmt(r['kimg']):>8} "
                     f"{_duration(r['train_seconds']):>8} " + " ".join(f"{_fmt(r['scores'].get(k)):>12}" for k, _ in cols))
    lines.append("")
    split = result["request"]["eval_split"]
    head = f"{'attribute':<12} {'labels':>8} {'clf real':>8} " + " ".join(f"{r['label'][:12]:>12}" for r in runs)
    lines += [f"attribute rates (real: the {split} split)", head, "-" * len(head)]
    for a in attrs:
        lines.append(f"{a:<12} {_pct(real['label_rates'][a]):>8} {_pct(real['classifier_rates'][a]):>8} "
                     + " ".join(f"{_pct(r['attr_rates'][a]):>12}" for r in runs))
    return "\n".join(lines)
