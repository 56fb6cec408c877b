"""Procedural cartoon faces with known CelebA attributes, for tests, demos and smoke runs.

Every face is a pure function of (seed, index): item i renders the same pixels and labels no
matter how many other items are generated, in what order, or in which worker process, so the
shard builder can scan cheaply here and render later in parallel.

Attributes in `SYNTHETIC_DRAWN` are sampled independently per face and drawn so they are
recoverable by a small CNN at 32x32; every other CelebA attribute is constant across faces.
Nuisance variation (position, scale, background, skin tone within its class, hair shade, eye and
mouth size, hat/glasses/clothes colours) keeps it a real learning problem.

    .venv/bin/python -c "from PIL import Image; from facegan.data.synthetic import render_face; \
        Image.fromarray(render_face(seed=0, index=3, height=218, width=178)).save('face.png')"
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from facegan.data.records import CELEBA_ATTRS, DataError, SourceItem, SourceScan

# Attributes that vary per face and show in the pixels (CELEBA_ATTRS order).
SYNTHETIC_DRAWN: tuple[str, ...] = (
    "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Male",
    "No_Beard", "Pale_Skin", "Smiling", "Wearing_Hat",
)

# Values of the attributes that are not drawn: a clean-shaven young default.
_CONSTANT_ATTRS: dict[str, int] = {
    name: (1 if name in ("No_Beard", "Young") else 0)
    for name in CELEBA_ATTRS if name not in SYNTHETIC_DRAWN
}

# Per-face probabilities, close to CelebA's where a small classifier can still learn the rare
# ones from a few thousand faces (Eyeglasses is 0.065 in CelebA; 0.2 here).
_P_MALE = 0.42
_P_SMILING = 0.48
_P_EYEGLASSES = 0.20
_P_BANGS = 0.20
_P_HAT = 0.15
_P_PALE = 0.20
_P_BEARD_IF_MALE = 0.35        # -> No_Beard ~ 0.85 overall
_P_SUNGLASSES_IF_GLASSES = 0.25

# Hair colour is one categorical draw, so Black_Hair and Blond_Hair are exclusive by construction.
# "red" carries no CelebA hair label, like CelebA's many faces with none of the four.
_HAIR: tuple[tuple[str, float, tuple[int, int, int]], ...] = (
    ("Black_Hair", 0.24, (28, 24, 24)),
    ("Blond_Hair", 0.15, (232, 194, 96)),
    ("Brown_Hair", 0.24, (96, 62, 38)),
    ("Gray_Hair", 0.10, (168, 168, 172)),
    ("red", 0.27, (184, 84, 38)),
)
_HAIR_CUM = np.cumsum([p for _, p, _ in _HAIR])

_PALE_SKIN = (248, 226, 212)
# Non-pale skin spans light to dark; its light end stays well apart from _PALE_SKIN so
# Pale_Skin is a colour threshold, not a guess.
_SKIN_LIGHT = (226, 180, 146)
_SKIN_DARK = (112, 72, 48)

# Slots of the per-face uniform vector. One vectorised draw per face is ~40x cheaper than
# scalar Generator calls, and fixed slots keep each value tied to one purpose whatever branch
# the drawing takes.
_U_SPLIT, _U_MALE, _U_SMILE, _U_GLASSES, _U_BANGS, _U_HAT, _U_HAIR, _U_PALE, _U_BEARD = range(9)
_NUISANCE: tuple[str, ...] = (
    "skin_t", "skin_r", "skin_g", "skin_b", "hair_shade", "hair_r", "hair_g", "hair_b",
    "bg_h", "bg_s", "bg_v", "clothes_h", "clothes_s", "clothes_v", "hat_h", "hat_s", "hat_v",
    "iris", "frame", "sunglasses", "scale", "aspect", "dx", "dy", "hairline", "bangs_tilt",
    "bangs_low", "eye_dx", "eye_size", "mouth_y", "mouth_size", "hat_crown", "hat_brim",
)
_FIRST_NUISANCE = 16
_NUM_U = _FIRST_NUISANCE + len(_NUISANCE)

_IRIS = ((60, 40, 25), (50, 90, 150), (60, 110, 60), (30, 25, 25))
_FRAME = ((20, 20, 20), (70, 40, 20), (30, 40, 90))
_FRAME_ON_DARK_SKIN = (205, 205, 215)   # silver, so frames do not vanish on dark skin

_SUPERSAMPLE = 4


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"synthetic: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _uniforms(seed: int, index: int) -> np.ndarray:
    seed = _check_int("seed", seed, minimum=0)
    index = _check_int("index", index, minimum=0)
    return np.random.default_rng([seed, index]).random(_NUM_U)


def _attrs_from(u: np.ndarray) -> dict[str, int]:
    attrs = dict(_CONSTANT_ATTRS)
    male = int(u[_U_MALE] < _P_MALE)
    attrs["Male"] = male
    attrs["Smiling"] = int(u[_U_SMILE] < _P_SMILING)
    attrs["Eyeglasses"] = int(u[_U_GLASSES] < _P_EYEGLASSES)
    attrs["Bangs"] = int(u[_U_BANGS] < _P_BANGS)
    attrs["Wearing_Hat"] = int(u[_U_HAT] < _P_HAT)
    attrs["Pale_Skin"] = int(u[_U_PALE] < _P_PALE)
    attrs["No_Beard"] = int(not (male and u[_U_BEARD] < _P_BEARD_IF_MALE))
    hair = _hair_index(u)
    for i, (name, _, _) in enumerate(_HAIR):
        if name in SYNTHETIC_DRAWN:
            attrs[name] = int(i == hair)
    return {name: attrs[name] for name in CELEBA_ATTRS}


def _hair_index(u: np.ndarray) -> int:
    return min(int(np.searchsorted(_HAIR_CUM, u[_U_HAIR], side="right")), len(_HAIR) - 1)


def sample_attributes(*, seed: int, index: int) -> dict[str, int]:
    """The 40 CelebA attributes (name -> 0/1) of synthetic face `index`; matches `render_face`."""
    return _attrs_from(_uniforms(seed, index))


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _clip(x: float) -> int:
    return max(0, min(255, int(x)))


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return _clip(c[0] * f), _clip(c[1] * f), _clip(c[2] * f)


def _jitter(c: tuple[int, int, int], u3: tuple[float, float, float], amount: float,
            ) -> tuple[int, int, int]:
    """Shift each channel by up to +-amount, driven by three uniforms in [0, 1)."""
    return (_clip(c[0] + (2 * u3[0] - 1) * amount), _clip(c[1] + (2 * u3[1] - 1) * amount),
            _clip(c[2] + (2 * u3[2] - 1) * amount))


def _dist(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _chord(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, start: float,
           end: float, fill: tuple[int, int, int], outline: tuple[int, int, int] | None = None,
           width: int = 1) -> None:
    """Fill the ellipse segment between angles start..end (degrees, clockwise from 3 o'clock).

    Drawn as a polygon because Pillow's own `chord` floods far outside the ellipse for some
    angle/size combinations (seen in Pillow 13.0 at 512 px canvases).
    """
    t = np.radians(np.linspace(start, end, 33))
    xs, ys = cx + rx * np.cos(t), cy + ry * np.sin(t)
    d.polygon(list(zip(xs.tolist(), ys.tolist())), fill=fill, outline=outline, width=width)


def render_face(*, seed: int, index: int, height: int, width: int) -> np.ndarray:
    """Render synthetic face `index` as uint8 HxWx3, labelled by `sample_attributes(seed, index)`.

    The face is centred and sized from min(height, width), so non-square frames (CelebA's
    218x178) get background margins rather than a stretched face.
    """
    height = _check_int("height", height, minimum=8)
    width = _check_int("width", width, minimum=8)
    u = _uniforms(seed, index)
    at = _attrs_from(u)
    male, smiling, glasses = at["Male"], at["Smiling"], at["Eyeglasses"]
    bangs, hat, pale, beard = at["Bangs"], at["Wearing_Hat"], at["Pale_Skin"], 1 - at["No_Beard"]
    nu = dict(zip(_NUISANCE, u[_FIRST_NUISANCE:].tolist()))

    def nx(name: str, lo: float, hi: float) -> float:
        return lo + (hi - lo) * nu[name]

    H, W = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    s = min(H, W)

    # --- colours
    if pale:
        skin_base = _PALE_SKIN
    else:
        t = nu["skin_t"]
        lo, hi = _SKIN_LIGHT, _SKIN_DARK
        skin_base = (_clip(lo[0] + (hi[0] - lo[0]) * t), _clip(lo[1] + (hi[1] - lo[1]) * t),
                     _clip(lo[2] + (hi[2] - lo[2]) * t))
    skin = _jitter(skin_base, (nu["skin_r"], nu["skin_g"], nu["skin_b"]), 9)
    hair = _jitter(_shade(_HAIR[_hair_index(u)][2], nx("hair_shade", 0.88, 1.12)),
                   (nu["hair_r"], nu["hair_g"], nu["hair_b"]), 8)
    bg = _rgb(nu["bg_h"], nx("bg_s", 0.12, 0.55), nx("bg_v", 0.5, 0.95))
    # A background that matches the hair would hide the hair's outline, which is the Male cue.
    if _dist(bg, hair) < 90:
        bg = _shade(bg, 0.45) if sum(hair) > 330 else _rgb(nu["bg_h"], 0.25, 0.93)
    clothes = _rgb(nu["clothes_h"], nx("clothes_s", 0.2, 0.8), nx("clothes_v", 0.25, 0.9))
    # hat hues skip the orange-yellow band of skin and blond/red hair
    hat_col = _rgb(nx("hat_h", 60 / 360, 345 / 360), nx("hat_s", 0.55, 0.9), nx("hat_v", 0.35, 0.9))
    iris = _IRIS[min(int(nu["iris"] * len(_IRIS)), len(_IRIS) - 1)]
    frame = _FRAME[min(int(nu["frame"] * len(_FRAME)), len(_FRAME) - 1)]
    if sum(skin) < 330:
        frame = _FRAME_ON_DARK_SKIN

    # --- geometry, in supersampled pixels
    scale = nx("scale", 0.9, 1.08)
    a = 0.255 * s * scale * nx("aspect", 0.94, 1.06) * (1.05 if male else 1.0)   # face half-width
    b = 0.325 * s * scale                                                 # face half-height
    cx = W / 2 + nx("dx", -0.04, 0.04) * s
    cy = H / 2 + (0.06 + nx("dy", -0.025, 0.025)) * s

    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)

    # shoulders and long hair first: everything else overlaps them
    d.ellipse((cx - 0.42 * s, cy + 0.82 * b, cx + 0.42 * s, cy + 0.82 * b + 0.7 * s), fill=clothes)
    if male:
        d.ellipse((cx - 1.14 * a, cy - 1.12 * b, cx + 1.14 * a, cy + 0.3 * b), fill=hair)
    else:
        d.ellipse((cx - 1.32 * a, cy - 1.14 * b, cx + 1.32 * a, cy + 0.6 * b), fill=hair)
        d.rectangle((cx - 1.32 * a, cy - 0.3 * b, cx + 1.32 * a, cy + 1.2 * b), fill=hair)
    d.rectangle((cx - 0.32 * a, cy + 0.5 * b, cx + 0.32 * a, cy + 1.1 * b), fill=_shade(skin, 0.88))
    d.ellipse((cx - a, cy - b, cx + a, cy + b), fill=skin, outline=_shade(skin, 0.7),
              width=max(1, round(0.03 * a)))

    # hair cap above the hairline; chord angles are where the cut line meets the hair ellipse.
    # Hair edges get a darker line so the hairline shows even when hair and skin are alike
    # (brown hair on dark skin); bangs sit ~0.4 face-half-heights below the bare hairline.
    ha, hb = 1.05 * a, 1.07 * b
    k = (0.6 if male else 0.66) + nx("hairline", -0.05, 0.05)
    ang = math.asin(k * b / hb)
    _chord(d, cx, cy, ha, hb, 180 + math.degrees(ang), 360 - math.degrees(ang), fill=hair)
    edge = _shade(hair, 0.62)
    edge_w = max(1, round(0.04 * b))
    if bangs:
        tilt = nx("bangs_tilt", -0.08, 0.08) * b
        low = cy - nx("bangs_low", 0.18, 0.24) * b
        d.polygon([(cx - 0.8 * a, cy - 0.6 * b), (cx + 0.8 * a, cy - 0.6 * b),
                   (cx + 0.94 * a, low - tilt), (cx - 0.94 * a, low + tilt)], fill=hair)
        d.line((cx - 0.94 * a, low + tilt, cx + 0.94 * a, low - tilt), fill=edge, width=edge_w)
    else:
        hx = ha * math.cos(ang)
        d.line((cx - hx, cy - k * b, cx + hx, cy - k * b), fill=edge, width=edge_w)

    if male:
        # sideburns keep the hair colour readable when a hat hides the top of the head
        sb = 0.16 * a
        d.rectangle((cx - 0.985 * a, cy - 0.55 * b, cx - 0.985 * a + sb, cy + 0.05 * b), fill=hair)
        d.rectangle((cx + 0.985 * a - sb, cy - 0.55 * b, cx + 0.985 * a, cy + 0.05 * b), fill=hair)

    # eyes and brows
    eye_y = cy - 0.04 * b
    eye_dx = nx("eye_dx", 0.36, 0.44) * a
    es = nx("eye_size", 0.8, 1.2)
    ew, eh = 0.17 * a * es, 0.095 * b * es
    ir = 0.85 * eh
    brow_y = cy - 0.24 * b
    brow_w = max(1, round((0.075 if male else 0.045) * b))
    brow_col = _shade(hair, 0.8)
    for sgn in (-1, 1):
        ex = cx + sgn * eye_dx
        d.ellipse((ex - ew, eye_y - eh, ex + ew, eye_y + eh), fill=(250, 250, 250))
        d.ellipse((ex - ir, eye_y - ir, ex + ir, eye_y + ir), fill=iris)
        d.line((cx + sgn * 0.16 * a, brow_y, cx + sgn * 0.62 * a, brow_y - 0.04 * b),
               fill=brow_col, width=brow_w)
    if glasses:
        gw, gh = 0.27 * a, 0.17 * b
        lw = max(1, round(0.11 * a))
        lens = (35, 35, 45) if nu["sunglasses"] < _P_SUNGLASSES_IF_GLASSES else None
        for sgn in (-1, 1):
            ex = cx + sgn * eye_dx
            d.rounded_rectangle((ex - gw, eye_y - gh, ex + gw, eye_y + gh), radius=0.3 * gh,
                                fill=lens, outline=frame, width=lw)
            d.line((ex + sgn * gw, eye_y - 0.5 * gh, cx + sgn * 0.99 * a, eye_y - 0.7 * gh),
                   fill=frame, width=lw)
        d.line((cx - eye_dx + gw, eye_y - 0.3 * gh, cx + eye_dx - gw, eye_y - 0.3 * gh),
               fill=frame, width=lw)

    # nose, beard, mouth
    d.ellipse((cx - 0.1 * a, cy + 0.2 * b, cx + 0.1 * a, cy + 0.28 * b), fill=_shade(skin, 0.78))
    mouth_y = cy + nx("mouth_y", 0.5, 0.56) * b
    if beard:
        ang = math.degrees(math.asin(0.3))
        _chord(d, cx, cy, a, b, ang, 180 - ang, fill=hair, outline=edge, width=edge_w)
        d.ellipse((cx - 0.42 * a, mouth_y - 0.2 * b, cx + 0.42 * a, mouth_y + 0.02 * b),
                  fill=hair, outline=edge, width=edge_w)
    ms = nx("mouth_size", 0.85, 1.15)
    # a smile is a wide open mouth with teeth; neutral is a small closed mouth, so at 32 px
    # the two differ in width, height and brightness, not only in curvature
    if smiling:
        mw = 0.46 * a * ms
        top = mouth_y - 0.03 * b
        _chord(d, cx, top, mw, 0.2 * b * ms, 0, 180, fill=(120, 24, 36))
        d.rectangle((cx - 0.78 * mw, top, cx + 0.78 * mw, top + 0.07 * b), fill=(250, 250, 250))
    else:
        mw = 0.2 * a * ms
        lip = (min(255, int(skin[0] * 0.8 + 40)), int(skin[1] * 0.55), int(skin[2] * 0.55))
        d.ellipse((cx - mw, mouth_y - 0.03 * b, cx + mw, mouth_y + 0.03 * b), fill=lip)

    if hat:
        brim_y = cy - 0.68 * b
        cw = 0.98 * a * nx("hat_crown", 0.95, 1.05)
        _chord(d, cx, brim_y, cw, 0.62 * b, 180, 360, fill=hat_col)
        d.rectangle((cx - cw, brim_y - 0.12 * b, cx + cw, brim_y), fill=_shade(hat_col, 0.6))
        bw = nx("hat_brim", 1.25, 1.45) * a
        d.ellipse((cx - bw, brim_y - 0.06 * b, cx + bw, brim_y + 0.07 * b), fill=hat_col)

    # BOX averages each 4x4 block exactly: smooth edges at a fraction of LANCZOS's cost
    return np.asarray(img.resize((width, height), Image.Resampling.BOX))


def _check_fraction(name: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not 0.0 <= value < 1.0):
        raise DataError(f"synthetic: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def scan_synthetic(*, count: int, seed: int, val_fraction: float = 0.1,
                   test_fraction: float = 0.1) -> SourceScan:
    """List `count` synthetic faces with labels and a deterministic train/val/test split.

    The split of item i depends only on (seed, i) and the fractions, so growing `count` keeps
    earlier items in their split. Partition codes follow CelebA: 0 train, 1 val, 2 test.
    """
    count = _check_int("count", count, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise DataError("synthetic: val_fraction + test_fraction must be < 1 so train is not "
                        f"empty, got {val_fraction} + {test_fraction}")
    items = []
    for index in range(count):
        u = _uniforms(seed, index)
        attrs = _attrs_from(u)
        if u[_U_SPLIT] < test_fraction:
            partition = 2
        elif u[_U_SPLIT] < test_fraction + val_fraction:
            partition = 1
        else:
            partition = 0
        items.append(SourceItem(
            key=f"synth{index:07d}", split=("train", "val", "test")[partition], path=None,
            index=index,
            labels={"attrs": [attrs[name] for name in CELEBA_ATTRS], "identity": index,
                    "partition": partition},
        ))
    return SourceScan(source="synthetic", items=items, attr_names=list(CELEBA_ATTRS),
                      label_fields=["attrs", "identity", "partition"])
