"""`facegan eval`: score a checkpoint, an image folder or a baseline against real shards.

    facegan eval --checkpoint runs/dcgan --shards data/celeba64 --classifier runs/classifier_celeba64
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facegan.config import ConfigError


def register(sub: Any) -> None:
    e = sub.add_parser("eval", help="FID/KID/precision-recall/diversity/memorisation of a checkpoint, "
                                    "an image folder or a baseline against real shards")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", default="", help="GAN checkpoint folder (or a run folder: its latest)")
    src.add_argument("--images", default="", help="folder of .png/.jpg images made by any program")
    src.add_argument("--baseline", default="", choices=["random", "real"],
                     help="random: faceless random images; real: held-out real images (--real-split)")
    e.add_argument("--shards", required=True, help="real shard set (facegan shards build)")
    e.add_argument("--num-samples", type=int, default=5000, help="generated images to score")
    e.add_argument("--features", default="attr", choices=["attr", "inception", "face"],
                   help="attr: the attribute classifier's features (reported as fid_attr, ...); "
                        "inception: Inception-v3 from --inception-weights (reported as fid, ...); "
                        "face: dlib's face descriptor only (fid_face, ...; no classifier needed)")
    e.add_argument("--face", default="auto", choices=["auto", "on", "off"],
                   help="face-identity metrics beside --features (fid_face, kid_face, precision/recall_face, "
                        "identity_diversity, face_detection_rate): auto = when dlib-bin and "
                        "face_recognition_models are installed (requirements.lock has them)")
    e.add_argument("--classifier", default="", help="attribute classifier checkpoint (or its run folder)")
    e.add_argument("--inception-weights", default="", help="local Inception-v3 weights file")
    e.add_argument("--num-real", type=int, default=10_000, help="at most this many real images per split")
    e.add_argument("--eval-split", default="val", choices=("train", "val", "test"),
                   help="held-out real split for FID/KID/precision/recall (default val)")
    e.add_argument("--train-split", default="train", choices=("train", "val", "test"),
                   help="split the memorisation metric searches for nearest neighbours (default train)")
    e.add_argument("--real-split", default="test", choices=("train", "val", "test"),
                   help="split used by --baseline real (default test)")
    e.add_argument("--metrics", default="", help="comma-separated subset of metrics (default: all)")
    e.add_argument("--batch-size", type=int, default=64, help="images per feature batch (default 64)")
    e.add_argument("--seed", type=int, default=0, help="seed of the generated set (default 0)")
    e.add_argument("--no-ema", action="store_true", help="score the raw G instead of its EMA")
    e.add_argument("--workers", type=int, default=0, help="Ray tasks sharing the work (0: in-process)")
    e.add_argument("--json", default="", help="where to write the result (default: next to the checkpoint, "
                                              "or eval.json in the current folder)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar (images featurised so far)")
    e.add_argument("--wandb", default="", metavar="PROJECT",
                   help="also log the scores as a W&B run (job_type eval) in PROJECT: offline unless a key is "
                        "set (WANDB_API_KEY or wandb login with WANDB_MODE=online); its folder goes beside the JSON")
    e.set_defaults(func=cmd_eval)


def expected_images(req: Any) -> int:
    """How many images an in-process evaluation featurises: generated, real train, real eval (and
    generated and real eval again through the face descriptor)."""
    from facegan.data.stream import ShardSet
    from facegan.metrics.features import IMAGE_SUFFIXES

    shards = ShardSet.open(req.shards)
    if req.source == "images":
        fake = min(req.num_samples, sum(1 for f in Path(req.images).iterdir()
                                            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
    elif req.source == "real":
        fake = min(req.num_samples, shards.count(req.real_split))
    else:
        fake = req.num_samples
    real_eval = min(req.num_real, shards.count(req.eval_split))
    face = fake + real_eval if req.face_extra else 0    # the face pass over the generated and eval images
    train = min(req.num_real, shards.count(req.train_split)) if req.needs_train else 0
    return fake + train + real_eval + face


def cmd_eval(args: Any) -> int:
    from facegan.checkpoint import find_checkpoint
    from facegan.evaluation.offline import EvalRequest, evaluate, format_table, write_result

    req = EvalRequest(shards=args.shards, checkpoint=args.checkpoint, images=args.images, baseline=args.baseline,
                      num_samples=args.num_samples, features=args.features, classifier=args.classifier,
                      inception_weights=args.inception_weights, num_real=args.num_real, eval_split=args.eval_split,
                      train_split=args.train_split, real_split=args.real_split, batch_size=args.batch_size,
                      seed=args.seed, use_ema=not args.no_ema, face=args.face,
                      metrics=[m.strip() for m in args.metrics.split(",") if m.strip()])
    if args.workers < 0:
        raise ConfigError(f"--workers: expected 0 or more, got {args.workers}")
    if args.json and (Path(args.json).is_dir() or Path(args.json).suffix.lower() != ".json"):
        raise ConfigError(f"--json: expected a .json file to write, got {args.json}")
    from facegan.data.paths import input_dir, output_file

    if args.json:
        output_file(args.json, flag="--json", suffix=".json")
    if args.images:
        input_dir(args.images, flag="--images")
    if args.features == "inception" and args.inception_weights:
        from facegan.metrics.features import check_weights_file

        check_weights_file(args.inception_weights)
    if args.baseline == "real" and args.real_split == args.eval_split:
        import sys

        print(f"WARNING: --real-split {args.real_split} is also --eval-split: the real baseline is scored against the "
              "same images (precision/recall 1.0, FID ~0 by construction); pick another --real-split for a baseline",
              file=sys.stderr)
    req.preflight()
    if req.face == "auto" and req.features != "face" and not req.face_extra:
        import sys

        from facegan.metrics.face import skipped_note

        print(skipped_note(), file=sys.stderr)
    shares = None
    if args.workers > 0:
        from facegan.launch.evaluate import ray_shares

        shares = ray_shares(req, workers=args.workers)
    bar = None
    if shares is None and not args.no_progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=expected_images(req), unit="img", desc="featurising generated and real images",
                   file=sys.stderr, smoothing=0.1)
    try:
        result = evaluate(req, shares=shares, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    print(format_table([result]))
    face = result.get("face")
    if face and face["fake_without_face"]:
        listed = face.get("files_without_face", [])
        print(f"{face['fake_without_face']} of {int(result['scores']['num_fake'])} generated images have no face "
              f"dlib's detector finds (scored from the fixed face box)"
              + (f", e.g. {', '.join(listed[:3])} (all listed in the JSON)" if listed else ""))
    if result["scores"].get("ms_ssim_alarm", 0) > 0:
        print("WARNING: generated images are nearly identical to each other (MS-SSIM alarm): mode collapse?")
    if args.json:
        out = Path(args.json)
    elif req.checkpoint:
        out = find_checkpoint(req.checkpoint) / f"eval_{req.features}.json"
    else:
        out = Path("eval.json")
    print(f"wrote {write_result(result, out)}")
    if args.wandb:
        from facegan.launch.sinks import log_eval_run, sync_command

        run_dir, mode = log_eval_run(result, project=args.wandb, out_dir=out.parent, name=out.stem)
        print(f"  W&B run:      {run_dir}")
        if mode == "offline":
            print(f"  W&B upload:   {sync_command(run_dir)}   (offline run; after `wandb login`)")
    return 0
