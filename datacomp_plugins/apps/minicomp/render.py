"""Sampling and drawing the world's images and captions with Pillow.

Every sample is a pure function of (world, seed, stream, index): its own numpy generator is seeded with
those numbers, so any process can render any sample, in any order, with the same bytes. Streams keep the
pool, the teacher corpus and each task's splits apart (the teachers never see a pool sample).

A sample is described by a plain dict (its "spec") before it is drawn; captions are written from the spec,
so a caption is correct exactly when the component says it should be.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from typing import Any

import numpy as np

from datacomp_plugins.apps.minicomp.world import COMPONENTS, TEXTURE_BACKGROUNDS, World, class_name

STREAM_POOL, STREAM_TEACHER, STREAM_EVAL = 1, 2, 3
SUPERSAMPLE = 4  # shapes are drawn at 4x and reduced, so 32 px images have smooth edges
_STRIPE, _DOT = (250, 250, 250), (15, 15, 15)


def sample_rng(world: World, stream: int, index: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([world.seed, stream, *extra, index])


def sample_uid(world: World, stream: int, index: int) -> str:
    """A 32-hex-digit uid, as DataComp's; independent of the sample's content draws."""
    return np.random.default_rng([world.seed, stream, index, 0x5EED]).bytes(16).hex()


def _choice(rng: np.random.Generator, values: list) -> Any:
    return values[int(rng.integers(len(values)))]


def _objects(world: World, rng: np.random.Generator, count: int, shape: str, color: str, pattern: str,
             sizes: tuple[int, int]) -> list[dict[str, Any]]:
    """``count`` objects placed with little overlap (rejection sampling, a few tries each)."""
    size_px = world["world"]["image_size"]
    placed: list[dict[str, Any]] = []
    for _ in range(count):
        best = None
        for _try in range(20):
            s = int(rng.integers(sizes[0], sizes[1] + 1))
            r = s / 2
            x = float(rng.uniform(r, size_px - r))
            y = float(rng.uniform(r, size_px - r))
            clash = any(math.hypot(x - o["x"], y - o["y"]) < 0.8 * (r + o["size"] / 2) for o in placed)
            best = {"shape": shape, "color": color, "pattern": pattern, "x": x, "y": y, "size": s}
            if not clash:
                break
        placed.append(best)
    return placed


def _scene(world: World, rng: np.random.Generator, values: dict[str, list], **fixed: Any) -> dict[str, Any]:
    """A one-kind scene: ``count`` objects of the same shape, colour and pattern on a background."""
    obj = world["objects"]
    pick = {k: fixed[k] if k in fixed else _choice(rng, values[k]) for k in ("shape", "color", "background")}
    pattern = fixed.get("pattern", _choice(rng, obj["patterns"]))
    count = int(fixed.get("count", _choice(rng, obj["counts"])))
    size = tuple(obj["size"])
    if count > 1:  # several objects keep to the smaller half of the size range so they fit
        size = (size[0], max(size[0], (size[0] + size[1]) // 2))
    return {"background": pick["background"], "count": count, "shape": pick["shape"], "color": pick["color"],
            "pattern": pattern,
            "objects": _objects(world, rng, count, pick["shape"], pick["color"], pattern, size),
            "overlay": None, "quality": world["world"]["jpeg_quality"], "noise_seed": int(rng.integers(2**31))}


def _on_task_values(world: World) -> dict[str, list]:
    obj = world["objects"]
    return {"shape": obj["shapes"], "color": obj["colors"], "background": obj["backgrounds"]}


def caption_fields(spec: dict[str, Any]) -> dict[str, str]:
    """The words a scene is described by: what every caption template may name."""
    count = spec["count"]
    shape = class_name("shape", spec["shape"])
    shapes = _plural(shape) if count > 1 else shape
    pattern = "" if spec["pattern"] == "solid" else spec["pattern"] + " "
    color = class_name("color", spec["color"])
    thing = f"{pattern}{color} {shapes}"
    obj = f"{class_name('count', count)} {thing}" if count > 1 else f"{'an' if thing[0] in 'aeiou' else 'a'} {thing}"
    return {"object": obj, "count": class_name("count", count), "color": color, "shape": shape,
            "shapes": shapes, "pattern": spec["pattern"], "background": class_name("background", spec["background"])}


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def _dropped_fields(world: World, spec: dict[str, Any], rng: np.random.Generator) -> dict[str, str]:
    """The fields with each attribute word dropped with probability ``captions.drop``, as alt-text leaves
    words out: a dropped shape becomes "shape", a dropped count, pattern, colour or background disappears."""
    p = world["captions"]["drop"]
    if p <= 0:
        return caption_fields(spec)
    drop = {attr: bool(rng.random() < p) for attr in ("count", "pattern", "color", "shape", "background")}
    count = 1 if drop["count"] else spec["count"]
    noun = "shape" if drop["shape"] else class_name("shape", spec["shape"])
    nouns = _plural(noun) if spec["count"] > 1 else noun
    words = [class_name("count", spec["count"]) if spec["count"] > 1 and not drop["count"] else "",
             "" if drop["pattern"] or spec["pattern"] == "solid" else spec["pattern"],
             "" if drop["color"] else class_name("color", spec["color"]), nouns]
    thing = " ".join(w for w in words if w)
    if count == 1 and spec["count"] == 1:
        thing = f"{'an' if thing[0] in 'aeiou' else 'a'} {thing}"
    return {"object": thing, "count": "" if drop["count"] else class_name("count", spec["count"]),
            "color": "" if drop["color"] else class_name("color", spec["color"]), "shape": noun, "shapes": nouns,
            "pattern": "" if drop["pattern"] else spec["pattern"],
            "background": "" if drop["background"] else class_name("background", spec["background"])}


def _noisy(world: World, text: str, rng: np.random.Generator) -> str:
    """``text`` with a web-noise token ("jpg", "free shipping") before or after it, with ``captions.noise_prob``."""
    caps = world["captions"]
    if caps["noise_prob"] <= 0 or not caps["noise"] or rng.random() >= caps["noise_prob"]:
        return text
    token = _choice(rng, caps["noise"])
    return f"{token} {text}" if rng.random() < 0.5 else f"{text} {token}"


def _fill(template: str, fields: dict[str, str]) -> str:
    return " ".join(template.format(**fields).split())  # a dropped word leaves no double space


def caption(world: World, spec: dict[str, Any], rng: np.random.Generator) -> str:
    """A caption from a random template, filled from the spec, with the world's caption noise."""
    template = _choice(rng, world["captions"]["templates"])
    return _noisy(world, _fill(template, _dropped_fields(world, spec, rng)), rng)


def hub_caption(world: World, spec: dict[str, Any], rng: np.random.Generator, key: str) -> str:
    """A caption from ``captions.<key>`` (generic, crowded, text), filled from the scene: true of the image,
    silent on shape and count when the templates are (the paper's hubs: correct but unspecific)."""
    return _noisy(world, _fill(_choice(rng, world["captions"][key]), caption_fields(spec)), rng)


def clean_spec(world: World, stream: int, index: int) -> dict[str, Any]:
    """The clean version of a sample: on-task scene, correct caption."""
    rng = sample_rng(world, stream, index)
    spec = _scene(world, rng, _on_task_values(world))
    spec["caption"] = caption(world, spec, rng)
    return spec


def make_spec(world: World, stream: int, index: int, components: np.ndarray,
              clean_idx: np.ndarray | None = None) -> dict[str, Any]:
    """The full spec of sample ``index`` of a stream whose component per index is ``components``.

    ``clean_idx`` (the indices whose component is clean) saves recomputing it for every near-duplicate.
    """
    comp = COMPONENTS[int(components[index])]
    rng = sample_rng(world, stream, index, 1)
    n = len(components)
    if comp == "near_duplicate":
        if clean_idx is None:
            clean_idx = np.flatnonzero(components == COMPONENTS.index("clean"))
        source = int(clean_idx[rng.integers(len(clean_idx))]) if len(clean_idx) else index
        spec = clean_spec(world, stream, source)
        dx, dy = _choice(rng, [(-1, 0), (1, 0), (0, -1), (0, 1), (1, 1), (-1, -1)])
        for o in spec["objects"]:
            o["x"] += dx
            o["y"] += dy
        spec["quality"] = max(10, spec["quality"] - 20)
        spec["source"] = source
    elif comp == "off_task":
        off, values = world["off_task"], dict(_on_task_values(world))
        for attr, part in (("shape", "shapes"), ("color", "colors"), ("background", "backgrounds")):
            if off[part]:
                values[attr] = off[part]
        spec = _scene(world, rng, values)
        spec["caption"] = caption(world, spec, rng)
    elif comp == "crowded_image":
        # many objects of every shape and pattern in one colour: close to every caption of that colour
        obj = world["objects"]
        spec = _scene(world, rng, _on_task_values(world), count=1)
        lo, hi = obj["crowded_count"]
        small = (obj["size"][0], max(obj["size"][0], (obj["size"][0] + obj["size"][1]) // 2))
        others = []
        for _ in range(int(rng.integers(lo, hi + 1)) - 1):
            others += _objects(world, rng, 1, _choice(rng, obj["shapes"]), spec["color"],
                               _choice(rng, obj["patterns"]), small)
        spec["objects"] = spec["objects"] + others
        spec["caption"] = hub_caption(world, spec, rng, "crowded")
    else:
        spec = clean_spec(world, stream, index)
        if comp == "mismatched":
            other = int(rng.integers(n - 1)) if n > 1 else 0
            other += other >= index
            spec["caption"] = clean_spec(world, stream, other)["caption"]
        elif comp == "generic_caption":
            spec["caption"] = hub_caption(world, spec, rng, "generic")
        elif comp == "text_in_image":
            # the colour's name written large in that colour, no object: a reader matches it to the caption
            spec["objects"] = []
            spec["overlay"] = class_name("color", spec["color"])
            spec["caption"] = hub_caption(world, spec, rng, "text")
    spec["component"] = comp
    return spec


def task_spec(world: World, task_index: int, split: int, index: int, label: int) -> dict[str, Any]:
    """An evaluation image of class ``label``: the class attribute fixed, the others on-task at random."""
    task = world["tasks"][task_index]
    rng = sample_rng(world, STREAM_EVAL, index, task_index, split)
    spec = _scene(world, rng, _on_task_values(world), **{task["attribute"]: task["classes"][label]})
    spec["caption"] = caption(world, spec, rng)
    return spec


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def regular(n: int, start: float, radius: float = r) -> list[tuple[float, float]]:
        angles = [start + 2 * math.pi * i / n for i in range(n)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]

    if kind == "triangle":
        return regular(3, -math.pi / 2)
    if kind == "diamond":
        return regular(4, -math.pi / 2)
    if kind == "pentagon":
        return regular(5, -math.pi / 2)
    if kind == "hexagon":
        return regular(6, 0)
    if kind == "star":
        outer, inner = regular(5, -math.pi / 2), regular(5, -math.pi / 2 + math.pi / 5, r * 0.42)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if kind == "arrow":
        w = r * 0.35
        return [(cx - r, cy - w), (cx + 0.1 * r, cy - w), (cx + 0.1 * r, cy - r * 0.8), (cx + r, cy),
                (cx + 0.1 * r, cy + r * 0.8), (cx + 0.1 * r, cy + w), (cx - r, cy + w)]
    raise ValueError(kind)


def _shape_mask(draw: Any, kind: str, cx: float, cy: float, r: float, font_cache: dict) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(1, int(r * 0.4)))
    elif kind == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
    elif kind == "bar":
        draw.rectangle((cx - r, cy - r * 0.3, cx + r, cy + r * 0.3), fill=255)
    elif kind == "cross":
        w = r * 0.33
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif kind == "moon":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - r * 0.45, cy - r * 1.05, cx + r * 1.35, cy + r * 0.75), fill=0)
    elif kind.startswith("glyph:"):
        size = max(4, int(r * 2.2))
        font = font_cache.get(size)
        if font is None:
            from PIL import ImageFont

            font = font_cache[size] = ImageFont.load_default(size=size)
        draw.text((cx, cy), kind[len("glyph:"):], fill=255, font=font, anchor="mm")
    else:
        draw.polygon(_polygon(kind, cx, cy, r), fill=255)


def _background(world: World, name: str, size: int, seed: int) -> Any:
    """The background, with a slight seeded tint (at most 6 of 255 per channel, plain colours and the checker
    board alike): invisible, but enough that no two simple scenes are the same bytes (positions alone are
    quantised by the drawing, and a corpus image equal to a pool or target image fails ``corpus_disjoint``)."""
    from PIL import Image

    palette = world["palette"]
    tint = np.random.default_rng([seed, 0x7147]).integers(-6, 7, 3)
    if name not in TEXTURE_BACKGROUNDS:
        rgb = [min(255, max(0, int(c) + int(t))) for c, t in zip(palette[name], tint, strict=True)]
        return Image.new("RGB", (size, size), tuple(rgb))
    if name == "noise":
        rng = np.random.default_rng(seed)
        small = rng.integers(60, 200, (size // 4 + 1, size // 4 + 1, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    cell = max(1, size // 8)
    yy, xx = np.mgrid[0:size, 0:size]
    board = (((yy // cell) + (xx // cell)) % 2).astype(np.uint8)
    arr = np.where(board[..., None] == 1, 170, 90).astype(np.int16).repeat(3, axis=2) + tint.astype(np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def draw(world: World, spec: dict[str, Any], _fonts: dict = {}) -> Any:  # noqa: B006 - a per-process font cache
    """The spec as an RGB image of world.image_size pixels."""
    from PIL import Image, ImageDraw

    size = world["world"]["image_size"]
    big = size * SUPERSAMPLE
    canvas = _background(world, spec["background"], big, spec["noise_seed"])
    for o in spec["objects"]:
        mask = Image.new("L", (big, big), 0)
        _shape_mask(ImageDraw.Draw(mask), o["shape"], o["x"] * SUPERSAMPLE, o["y"] * SUPERSAMPLE,
                    o["size"] * SUPERSAMPLE / 2, _fonts)
        fill = Image.new("RGB", (big, big), tuple(world["palette"][o["color"]]))
        if o["pattern"] != "solid":
            fd = ImageDraw.Draw(fill)
            step = 3 * SUPERSAMPLE
            if o["pattern"] == "striped":
                for k in range(-big, big, step):
                    fd.line((k, 0, k + big, big), fill=_STRIPE, width=SUPERSAMPLE)
            else:
                for yy in range(0, big, step):
                    for xx in range(0, big, step):
                        fd.ellipse((xx, yy, xx + SUPERSAMPLE, yy + SUPERSAMPLE), fill=_DOT)
        canvas.paste(fill, (0, 0), mask)
    if spec.get("overlay"):
        _write(canvas, spec["overlay"], tuple(world["palette"][spec["color"]]), spec["noise_seed"], _fonts)
    return canvas.resize((size, size), Image.Resampling.BOX)


def _write(canvas: Any, text: str, colour: tuple[int, int, int], seed: int, fonts: dict) -> None:
    """``text`` in bold letters as large as fit the canvas, in ``colour`` with a contrasting outline, at a
    seeded small offset from the centre (so no two text images are the same bytes); a 32 px image still
    shows letters 8-12 px high."""
    from PIL import ImageDraw, ImageFont

    big = canvas.size[0]
    rng = np.random.default_rng(seed)
    size = int(big * 0.55 * rng.uniform(0.85, 1.0))
    font = None
    while size > 8:
        font = fonts.get(("text", size)) or fonts.setdefault(("text", size), ImageFont.load_default(size=size))
        left, _, right, _ = font.getbbox(text, stroke_width=SUPERSAMPLE)
        if right - left <= big * 0.96:
            break
        size = int(size * 0.92)
    cx, cy = big * (0.5 + rng.uniform(-0.06, 0.06)), big * (0.5 + rng.uniform(-0.2, 0.2))
    outline = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((cx, cy), text, font=font, anchor="mm", fill=outline, stroke_width=SUPERSAMPLE, stroke_fill=outline)
    draw.text((cx, cy), text, font=font, anchor="mm", fill=colour, stroke_width=SUPERSAMPLE // 2, stroke_fill=colour)


def jpeg(image: Any, quality: int) -> bytes:
    """JPEG without chroma subsampling: at 32 px, 4:2:0 washed small striped objects out to no colour at all."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Tars


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A tar member with fixed metadata, so equal samples give equal tar bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """Write a tar atomically (temporary name, then rename)."""
    from datacomp_plugins.core.fileio import atomic_open

    with atomic_open(path, "wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)


def pool_member_files(key: str, uid: str, spec: dict[str, Any], image_bytes: bytes,
                      size: int) -> list[tuple[str, bytes]]:
    """img2dataset's files for one sample: ``<key>.jpg``, ``<key>.txt``, ``<key>.json``."""
    import hashlib

    meta = {"uid": uid, "url": f"https://minicomp.invalid/{uid}.jpg", "key": key, "caption": spec["caption"],
            "status": "success", "error_message": None, "width": size, "height": size, "original_width": size,
            "original_height": size, "exif": None, "sha256": hashlib.sha256(image_bytes).hexdigest()}
    return [(f"{key}.jpg", image_bytes), (f"{key}.txt", spec["caption"].encode()),
            (f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
