"""GAN inversion on Ray: the photos split into `workers` chunks, one Ray task each.

    facegan invert photos/*.jpg --checkpoint runs/dcgan --out inv/ --workers 4

Every task loads the generator itself and inverts its chunk; the chunks come back in order, so the
result is the one a single process would give for the same seed per chunk.
"""

from __future__ import annotations

from typing import Any

from facegan.launch.cluster import ensure_ray
from facegan.launch.evaluate import localize_path


def _invert_task(checkpoint: str, paths: list[str], indices: list[int], options: dict[str, Any], ema: bool,
                 predictor: str) -> dict[str, Any]:
    import torch

    from facegan.control import load_photos
    from facegan.families.loading import load_generator
    from facegan.inversion import InvertOptions, invert, load_predictor_fn

    torch.set_num_threads(1)
    gen = load_generator(checkpoint, ema=ema)
    h, w = gen.resolution
    photos = load_photos(paths, crop=gen.crop, height=h, width=w)
    result = invert(gen, photos, InvertOptions(**options), predictor=load_predictor_fn(predictor, gen=gen), indices=indices)
    return {"latent": result.latent, "start": result.start, "start_images": result.start_images,
            "images": result.images, "scores": result.scores, "start_kind": result.start_kind,
            "attrs": result.attrs, "photos": photos}


def ray_invert(checkpoint: str, paths: list[str], options: dict[str, Any], *, workers: int, ema: bool = True,
               predictor: str = "", address: str = "") -> list[dict[str, Any]]:
    """One result dict per chunk of photos, in order (joins $RAY_ADDRESS or starts a local cluster)."""
    import ray

    ensure_ray(address)
    task = ray.remote(num_cpus=1)(_invert_task)
    chunks = [paths[i::workers] for i in range(workers)]
    order = [list(range(len(paths)))[i::workers] for i in range(workers)]
    refs = [task.remote(localize_path(checkpoint), [localize_path(p) for p in chunk], idx, options, ema,
                        localize_path(predictor)) for chunk, idx in zip(chunks, order) if chunk]
    results = ray.get(refs)
    return [dict(r, order=o) for r, o in zip(results, [o for o in order if o])]
