"""Does facegan's augmentation help face recognition with few photos per person? (seed 002's question)

    .venv/bin/python benchmarks/bench_recognition.py --shards data/celeba64 \\
        --checkpoint runs/infogan_celeba64 --classifier runs/classifier_celeba64 --out bench_recognition

The protocol the field uses: a pretrained face-recognition network, people it was not tuned on,
a few enrolment photos per person.

- Features: dlib's ResNet face descriptor (facegan.metrics.face: upscale, 5-point alignment in the
  detector's box or the fixed aligned-crop box, 128-d), the same path for real photos, classical
  augmentations and generated variants.
- People: the identities of --splits (val,test). CelebA's partition is identity-disjoint, so a
  GAN trained on the train split never saw them.
- Closed-set identification: per seed, K enrolment photos per identity (K = 1, 3, 5) are drawn
  from the identity's pool (the first --pool photos in a seeded order: only those are augmented,
  to bound the cost), every other photo of the identity is a probe. Identities with fewer than
  K + 1 photos are left out (and counted). Two recognisers on the enrolment descriptors:
  nearest centroid (Euclidean distance to each identity's mean descriptor) and a linear probe
  (ridge classifier: least squares onto +-1 one-hot targets, L2 0.01, closed form). Top-1
  accuracy over the probes.
- Arms: `real` (the K photos); `classical` (+ --classical flips / crop jitter / colour jitter of
  each); `facegan` (+ each photo's inverted-and-edited variants that pass facegan augment's
  identity filter: one edit towards each attribute of --attributes, strength searched per photo
  with the attribute classifier, dlib distance to the photo <= --max-identity-distance); `both`.
- Attribute shift (seed 002's "growing a beard or wearing glasses"): for each attribute A=v
  (Eyeglasses=1, Smiling=1, No_Beard=0, Wearing_Hat=1; CelebA labels), every identity enrols up to
  --shift-k pool photos without A, and the probes are the photos with A of the identities that
  have both; the facegan arm adds each enrolment photo's edit towards A (when it landed and kept
  identity), the classical arm its classical variants.
- --seeds enrolment draws; mean and 95% t interval over seeds; probe counts. Prints a table, writes
  JSON. Descriptors, inversions and variants are cached in --out (a rerun with the same settings
  only redraws the enrolments).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.augment import IdentityFilter, Source, augment_batch, shard_sources  # noqa: E402
from facegan.errors import ConfigError  # noqa: E402
from facegan.inversion import Edit, FaceCheck, InvertOptions  # noqa: E402

ARMS = ("real", "classical", "facegan", "both")
RECOGNISERS = ("centroid", "linear")
SHIFT_ATTRS = "Eyeglasses=1,Smiling=1,No_Beard=0,Wearing_Hat=1"


# ============================================================================ protocol

@dataclass
class Draw:
    """One enrolment draw: photo indices enrolled and probed, the identities, those left out."""

    enrol: list[int]
    probes: list[int]
    identities: list[int]
    skipped: dict[int, int] = field(default_factory=dict)      # identity -> its photo count


def _order(members: list[int], *, seed: int, ident: int) -> list[int]:
    g = np.random.default_rng([seed, ident])
    return [members[i] for i in g.permutation(len(members))]


def enrolment_draw(ids: np.ndarray, *, k: int, seed: int, pool: dict[int, list[int]] | None = None) -> Draw:
    """K enrolment photos per identity (from its pool when given, else from all its photos),
    the rest of its photos as probes; identities with fewer than K + 1 photos are skipped."""
    enrol, probes, kept, skipped = [], [], [], {}
    for ident in sorted(set(ids.tolist())):
        members = [int(i) for i in np.nonzero(ids == ident)[0]]
        if len(members) < k + 1:
            skipped[ident] = len(members)
            continue
        candidates = pool[ident] if pool is not None else members
        chosen = _order(candidates, seed=seed, ident=ident)[:k]
        enrol += chosen
        probes += [m for m in members if m not in chosen]
        kept.append(ident)
    return Draw(enrol=enrol, probes=probes, identities=kept, skipped=skipped)


@dataclass
class Shift:
    """Attribute shift: who can enrol (photos without A) and who is probed (photos with A)."""

    enrol_pool: dict[int, list[int]]     # identity -> its photos without A (candidates to enrol)
    probes: list[int]                    # photos with A of identities that also have photos without
    probe_identities: list[int]


def attribute_shift(ids: np.ndarray, has: np.ndarray, *, allowed: set[int] | None = None) -> Shift:
    """Per identity: photos without the attribute (of `allowed`, when given) may enrol; photos with
    it are probes where the identity has both."""
    enrol_pool, probes, probe_ids = {}, [], []
    for ident in sorted(set(ids.tolist())):
        members = np.nonzero(ids == ident)[0]
        without = [int(i) for i in members if not has[i] and (allowed is None or int(i) in allowed)]
        with_ = [int(i) for i in members if has[i]]
        if without:
            enrol_pool[ident] = without
            if with_:
                probes += with_
                probe_ids.append(ident)
    return Shift(enrol_pool=enrol_pool, probes=probes, probe_identities=probe_ids)


def nearest_centroid(enrol: np.ndarray, enrol_y: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Each probe's identity: the nearest (Euclidean) mean enrolment descriptor."""
    labels = np.unique(enrol_y)
    centres = np.stack([enrol[enrol_y == c].mean(0) for c in labels])
    d = ((probes[:, None, :] - centres[None]) ** 2).sum(-1)
    return labels[d.argmin(1)]


def linear_probe(enrol: np.ndarray, enrol_y: np.ndarray, probes: np.ndarray, *, l2: float = 1e-2) -> np.ndarray:
    """A linear classifier on the descriptors: ridge regression onto +-1 one-hot targets in closed
    form (scikit-learn's RidgeClassifier), a bias column unpenalised; the highest score wins."""
    labels, y = np.unique(enrol_y, return_inverse=True)
    x = np.concatenate([np.asarray(enrol, dtype=np.float64), np.ones((len(enrol), 1))], axis=1)
    target = -np.ones((len(enrol), len(labels)))
    target[np.arange(len(enrol)), y] = 1.0
    penalty = l2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    w = np.linalg.solve(x.T @ x + penalty, x.T @ target)
    scores = np.concatenate([np.asarray(probes, dtype=np.float64), np.ones((len(probes), 1))], axis=1) @ w
    return labels[scores.argmax(1)]


def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t interval (None for a single value)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, None
    return mean, float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))


def top1(recogniser: str, enrol: np.ndarray, enrol_y: np.ndarray, probes: np.ndarray, probe_y: np.ndarray) -> float:
    fn = nearest_centroid if recogniser == "centroid" else linear_probe
    return float((fn(enrol, enrol_y, probes) == probe_y).mean())


# ============================================================================ images and descriptors

def classical(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, random resized crop (area 0.8..1), brightness/contrast and per-channel colour jitter."""
    b, _, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(b):
        x = img[i]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        s = 0.8 + 0.2 * float(torch.rand((), generator=gen))
        ch, cw = max(8, int(h * s ** 0.5)), max(8, int(w * s ** 0.5))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        x = torch.nn.functional.interpolate(x[None, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                            align_corners=False)[0]
        bright = 0.2 * (2 * float(torch.rand((), generator=gen)) - 1)
        contrast = 1 + 0.2 * (2 * float(torch.rand((), generator=gen)) - 1)
        colour = 1 + 0.1 * (2 * torch.rand(3, 1, 1, generator=gen) - 1)
        mean = x.mean()
        out[i] = (((x - mean) * contrast + mean) * colour + bright).clamp(-1, 1)
    return out


def shift_edits(spec: str, *, scale: float, directions: dict[str, torch.Tensor]) -> tuple[list[tuple[str, int]],
                                                                                         list[Edit]]:
    """[(attribute, value)] from "Eyeglasses=1,No_Beard=0,..." and the edits towards each (those
    with a stored direction): +scale x the direction for value 1, -scale for 0."""
    targets, edits = [], []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, value = item.partition("=")
        if value not in ("0", "1"):
            raise SystemExit(f"--attributes: expected NAME=0|1, got {item!r}")
        targets.append((name, int(value)))
        if name in directions:
            edits.append(Edit(name=f"{name}={value}", directions={name: scale if value == "1" else -scale}))
    return targets, edits


def cached(path: Path, fingerprint: str, make: Any) -> Any:
    if path.is_file():
        doc = torch.load(path, weights_only=False)
        if doc.get("fingerprint") == fingerprint:
            return doc["value"]
    value = make()
    torch.save({"fingerprint": fingerprint, "value": value}, path)
    return value


def _fp(**kw: Any) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ============================================================================ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="shard set with identity and attribute labels")
    ap.add_argument("--splits", default="val,test", help="splits whose identities are used (default val,test)")
    ap.add_argument("--checkpoint", required=True, help="the GAN whose inversions make the variants")
    ap.add_argument("--classifier", required=True, help="attribute classifier (directions and the strength search)")
    ap.add_argument("--k", default="1,3,5", help="enrolment photos per identity (default 1,3,5)")
    ap.add_argument("--seeds", type=int, default=10, help="enrolment draws (default 10)")
    ap.add_argument("--pool", type=int, default=6, help="photos per identity that may enrol and are augmented "
                                                        "(default 6)")
    ap.add_argument("--attributes", default=SHIFT_ATTRS, help=f"attribute edits and shift tests (default {SHIFT_ATTRS})")
    ap.add_argument("--shift-k", type=int, default=3, help="attribute shift: enrolment photos without A per identity")
    ap.add_argument("--scale", type=float, default=1.0, help="direction scale the strengths multiply (default 1)")
    ap.add_argument("--strengths", default="0.5,1,1.5,2,3", help="strength search (multiples of --scale)")
    ap.add_argument("--max-identity-distance", type=float, default=0.6, help="identity filter (default 0.6)")
    ap.add_argument("--classical", type=int, default=4, help="classical variants per enrolment photo (default 4)")
    ap.add_argument("--inversion-steps", type=int, default=100)
    ap.add_argument("--loss", default="mse,ms_ssim")
    ap.add_argument("--direction-samples", type=int, default=4000, help="generated faces for `facegan directions`")
    ap.add_argument("--out", default="bench_recognition")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.k.split(",")]
    seeds = list(range(args.seeds))
    if not ks or min(ks) < 1 or args.pool < max(ks) + 1 or args.seeds < 1 or args.shift_k < 1:
        raise SystemExit(f"--k: expected 1 or more per identity, and --pool ({args.pool}) above the largest K "
                         "(so that K draws vary over seeds); --seeds and --shift-k >= 1")
    t_start = time.perf_counter()

    from facegan.families.classifier.scoring import load_classifier
    from facegan.families.loading import load_generator
    from facegan.inversion import find_directions, load_directions, parse_losses, save_directions
    from facegan.metrics.face import describe_faces

    gen = load_generator(args.checkpoint)
    classifier = load_classifier(args.classifier)
    sources: list[Source] = list(shard_sources(args.shards, splits=args.splits.split(","), resolution=gen.resolution))
    sources = [s for s in sources if "identity" in s.labels]
    ids = np.array([s.labels["identity"] for s in sources])
    attr_names = list(classifier.attr_names)
    attrs = np.array([s.labels["attrs"] for s in sources], dtype=bool)
    print(f"{len(set(ids.tolist()))} identities, {len(sources)} photos from {args.shards} ({args.splits}); "
          f"GAN {gen.family.name} {gen.kimg:.1f} kimg", flush=True)

    try:
        directions = load_directions(gen.checkpoint)
    except ConfigError:  # none stored yet: compute them as `facegan directions` does
        try:
            found = find_directions(gen, classifier, num_samples=args.direction_samples, seed=0)
        except ConfigError as exc:       # the classifier reads no attribute in this generator's faces
            print(f"no attribute directions: {exc}", flush=True)
            found = {"directions": {}}
        else:
            save_directions(found, gen.checkpoint)
        directions = found["directions"]
    targets, edits = shift_edits(args.attributes, scale=args.scale, directions=directions)
    missing = [f"{n}={v}" for n, v in targets if n not in directions]
    print(f"edits: {', '.join(e.name for e in edits)}" + (f"; no direction for {', '.join(missing)}" if missing else ""),
          flush=True)

    # Pools: the first --pool photos of each identity in a seeded order (seed 12345).
    pool = {int(i): _order([int(j) for j in np.nonzero(ids == i)[0]], seed=12345, ident=int(i))[:args.pool]
            for i in sorted(set(ids.tolist()))}
    pooled = sorted(j for members in pool.values() for j in members)
    keys_fp = _fp(keys=[s.key for s in sources], shards=str(args.shards))

    def real_descriptors() -> np.ndarray:
        t0 = time.perf_counter()
        d = describe_faces(torch.stack([s.image for s in sources]), align="detect")
        print(f"  descriptors of {len(sources)} photos: {time.perf_counter() - t0:.0f} s "
              f"(face detected in {100 * d.detected.mean():.0f}%)", flush=True)
        return np.concatenate([d.descriptors, d.detected[:, None].astype(np.float32)], axis=1)

    real = cached(out / "real.pt", keys_fp, real_descriptors)
    real_desc, real_detected = real[:, :128], real[:, 128] > 0.5

    def classical_descriptors() -> np.ndarray:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        imgs = torch.stack([s.image for s in sources])[pooled]
        made = torch.stack([classical(imgs, g) for _ in range(args.classical)], dim=1).flatten(0, 1)
        d = describe_faces(made, align="detect").descriptors.reshape(len(pooled), args.classical, 128)
        print(f"  descriptors of {made.shape[0]} classical variants: {time.perf_counter() - t0:.0f} s", flush=True)
        return d

    classical_desc = dict(zip(pooled, cached(out / "classical.pt", _fp(k=keys_fp, n=args.classical, pool=pooled),
                                              classical_descriptors)))

    strengths = tuple(sorted(float(f) for f in args.strengths.split(",")))
    identity = IdentityFilter(check=FaceCheck(threshold=args.max_identity_distance),
                              max_distance=args.max_identity_distance, classifier=classifier, strengths=strengths)
    all_edits = [Edit(name="reconstruction"), *edits]
    options = InvertOptions(losses=parse_losses(args.loss), steps=args.inversion_steps)

    def facegan_variants() -> dict[int, list[dict[str, Any]]]:
        t0 = time.perf_counter()
        made: dict[int, list[dict[str, Any]]] = {}
        batch = 32
        for b in range(0, len(pooled), batch):
            idx = pooled[b:b + batch]
            variants = augment_batch(gen, [sources[i] for i in idx], edits=all_edits, variants=len(all_edits),
                                     options=options, directions=directions, jitter=0.0, seed=0, identity=identity)
            for i, vs in zip(idx, variants):       # descriptors: the identity filter's own
                made[i] = [{**v.record(), "descriptor": v.descriptor if v.kept else None} for v in vs]
            print(f"  inverted, edited and filtered {min(b + batch, len(pooled))}/{len(pooled)} photos "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return made

    variants = cached(out / "variants.pt", _fp(k=keys_fp, pool=pooled, edits=[vars(e) for e in all_edits],
                                               strengths=strengths, D=args.max_identity_distance, loss=args.loss,
                                               steps=args.inversion_steps, ckpt=gen.checkpoint,
                                               clf=str(args.classifier)), facegan_variants)

    def added(arm: str, photos: list[int], *, only: str | None = None) -> tuple[list[np.ndarray], list[int]]:
        """Descriptors and their photo indices that an arm adds for the enrolment photos."""
        desc, owner = [], []
        for p in photos:
            if arm in ("classical", "both"):
                desc += list(classical_desc[p])
                owner += [p] * len(classical_desc[p])
            if arm in ("facegan", "both"):
                for r in variants[p]:
                    if r["kept"] and r["edit"] != "reconstruction" and (only is None or r["edit"] == only):
                        desc.append(r["descriptor"])
                        owner.append(p)
        return desc, owner

    def score(enrol: list[int], probes: list[int], *, only: str | None = None) -> dict[str, dict[str, float]]:
        res: dict[str, dict[str, float]] = {}
        for arm in ARMS:
            extra, owner = added(arm, enrol, only=only)
            x = np.concatenate([real_desc[enrol], np.asarray(extra).reshape(-1, 128)])
            y = np.concatenate([ids[enrol], ids[owner]]) if owner else ids[enrol]
            res[arm] = {r: top1(r, x, y, real_desc[probes], ids[probes]) for r in RECOGNISERS}
            res[arm]["added"] = len(extra)
        return res

    results: dict[str, Any] = {"closed_set": {}, "attribute_shift": {}}
    for k in ks:
        runs = [(enrolment_draw(ids, k=k, seed=s, pool=pool)) for s in seeds]
        if len(runs[0].identities) < 2:
            results["closed_set"][f"K={k}"] = {"probes": 0, "skipped": {str(i): n for i, n in runs[0].skipped.items()},
                                               "note": f"fewer than 2 identities with {k + 1} or more photos"}
            continue
        per_seed = [score(d.enrol, d.probes) for d in runs]
        results["closed_set"][f"K={k}"] = _summarise(per_seed, probes=len(runs[0].probes),
                                                     identities=len(runs[0].identities), skipped=runs[0].skipped)
    for name, value in targets:
        j = attr_names.index(name)
        has = attrs[:, j] == bool(value)
        shift = attribute_shift(ids, has, allowed=set(pooled))
        label = f"{name}={value}"
        if len(shift.enrol_pool) < 2 or not shift.probes:
            results["attribute_shift"][label] = {"probes": 0, "note": "no identity has photos both with and without"}
            continue
        per_seed = []
        for s in seeds:
            enrol = [p for ident, cands in shift.enrol_pool.items()
                     for p in _order(cands, seed=s, ident=ident)[:args.shift_k]]
            per_seed.append(score(enrol, shift.probes, only=label))
        kept = sum(r["kept"] for p in pooled if not has[p] for r in variants[p] if r["edit"] == label)
        tried = sum(1 for p in pooled if not has[p] for r in variants[p] if r["edit"] == label)
        results["attribute_shift"][label] = {
            **_summarise(per_seed, probes=len(shift.probes), identities=len(shift.enrol_pool)),
            "probe_identities": len(shift.probe_identities), "edit_available": label in [e.name for e in edits],
            "variants_kept_of_tried": [kept, tried]}

    recon = [r for p in pooled for r in variants[p] if r["edit"] == "reconstruction"]
    rd = [r["identity_distance"] for r in recon if r["identity_distance"] is not None]
    edit_stats = {}
    for e in edits:
        rows = [r for p in pooled for r in variants[p] if r["edit"] == e.name]
        dist = [r["identity_distance"] for r in rows if r["identity_distance"] is not None]
        edit_stats[e.name] = {"tried": len(rows), "landed": sum(bool(r["landed"]) for r in rows),
                              "kept": sum(r["kept"] for r in rows),
                              "mean_strength_landed": _mean([r["strength"] for r in rows if r["landed"]]),
                              "mean_identity_distance": _mean(dist)}
    same_id = _pair_distances(real_desc, ids, same=True)
    diff_id = _pair_distances(real_desc, ids, same=False)
    doc = {"settings": {k: v for k, v in vars(args).items()}, "generator": {"checkpoint": gen.checkpoint,
           "family": gen.family.name, "kimg": gen.kimg}, "identities": len(set(ids.tolist())), "photos": len(sources),
           "face_detected_share": float(real_detected.mean()), "pooled_photos": len(pooled),
           "dlib_distance": {"same_identity_mean": same_id, "different_identity_mean": diff_id,
                             "photo_to_reconstruction_mean": _mean(rd),
                             "reconstruction_same_person_share": _mean([float(d <= args.max_identity_distance)
                                                                        for d in rd])},
           "edits": edit_stats, "results": results, "seconds": round(time.perf_counter() - t_start, 1)}
    (out / "bench_recognition.json").write_text(json.dumps(doc, indent=1, default=float))
    print(format_table(doc))
    print(f"\nwrote {out / 'bench_recognition.json'} ({doc['seconds']:.0f} s)")
    return 0


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _pair_distances(desc: np.ndarray, ids: np.ndarray, *, same: bool) -> float:
    from facegan.metrics.face import pairwise_face_distances

    d = pairwise_face_distances(desc)
    mask = (ids[:, None] == ids[None]) if same else (ids[:, None] != ids[None])
    np.fill_diagonal(mask, False)
    return round(float(d[mask].mean()), 4)


def _summarise(per_seed: list[dict[str, dict[str, float]]], **counts: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(counts)
    out["skipped"] = {str(k): v for k, v in counts.get("skipped", {}).items()}
    for arm in ARMS:
        row: dict[str, Any] = {"added_mean": float(np.mean([s[arm]["added"] for s in per_seed]))}
        for r in RECOGNISERS:
            values = [s[arm][r] for s in per_seed]
            mean, half = interval(values)
            row[r] = {"mean": round(mean, 4), "ci95": None if half is None else round(half, 4),
                      "per_seed": [round(v, 4) for v in values]}
        out[arm] = row
    return out


def format_table(doc: dict[str, Any]) -> str:
    def cell(row: dict[str, Any]) -> str:
        return f"{row['mean']:.3f} ± {row['ci95']:.3f}" if row["ci95"] is not None else f"{row['mean']:.3f}"

    lines = [f"\ntop-1 on probes of {doc['identities']} unseen identities (dlib descriptors; mean ± 95% interval "
             f"over {doc['settings']['seeds']} enrolment draws)"]
    head = f"{'':22}{'probes':>7}" + "".join(f"{a + ' ' + r[:4]:>17}" for a in ARMS for r in RECOGNISERS)
    lines.append(head)
    for section in ("closed_set", "attribute_shift"):
        for key, row in doc["results"][section].items():
            if "real" not in row:
                lines.append(f"{key:22}{row['probes']:>7}  {row.get('note', '')}")
                continue
            lines.append(f"{key:22}{row['probes']:>7}" + "".join(f"{cell(row[a][r]):>17}" for a in ARMS
                                                                 for r in RECOGNISERS))
    lines.append("images added per enrolment set (mean): " + "; ".join(
        f"{key}: " + ", ".join(f"{a} {row[a]['added_mean']:.0f}" for a in ARMS[1:])
        for section in ("closed_set", "attribute_shift") for key, row in doc["results"][section].items()
        if "real" in row))
    d = doc["dlib_distance"]
    lines.append(f"dlib distance: same identity {d['same_identity_mean']:.3f}, different {d['different_identity_mean']:.3f}"
                 f", photo -> reconstruction {d['photo_to_reconstruction_mean']}, reconstructions the same person "
                 f"{d['reconstruction_same_person_share']}")
    for name, e in doc["edits"].items():
        lines.append(f"edit {name}: landed {e['landed']}/{e['tried']}, kept {e['kept']} (mean strength "
                     f"{e['mean_strength_landed']}, mean distance {e['mean_identity_distance']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
