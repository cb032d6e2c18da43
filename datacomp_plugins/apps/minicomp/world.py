"""The world file: a TOML description of everything the mini DataComp is made of, and its validation.

A world someone else writes from the docs alone must either build or fail with a message naming the key,
so every key is checked here (type, range, cross-references) before any work starts. The ``[quick]`` table
is merged over the rest for ``--quick``, so one file describes both sizes of a world.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from datacomp_plugins.core.errors import PluginError

DEFAULT_WORLD = os.path.join(os.path.dirname(__file__), "default_world.toml")
# packaged worlds, by the name ``--world`` takes
WORLDS = {"default": DEFAULT_WORLD, "second": os.path.join(os.path.dirname(__file__), "second_world.toml")}

COMPONENTS = ("clean", "mismatched", "generic_caption", "crowded_image", "text_in_image", "off_task",
              "near_duplicate")
ATTRIBUTES = ("shape", "color", "background", "pattern", "count")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "moon", "arrow", "ring",
          "pentagon", "bar")
PATTERNS = ("solid", "striped", "dotted")
TEXTURE_BACKGROUNDS = ("noise", "checker")
CAPTION_FIELDS = ("object", "count", "color", "shape", "shapes", "pattern", "background")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")

# key -> expected type; a dict is a sub-table. Lists are checked further below.
_TEACHER = {"vision": str, "embed_dim": int, "width": int, "layers": int, "patch_size": int, "text_width": int,
            "text_layers": int, "context_length": int, "epochs": int, "batch_size": int, "lr": float,
            "warmup": int}
_SCHEMA: dict[str, Any] = {
    "world": {"image_size": int, "jpeg_quality": int, "seed": int},
    "pool": {"size": int, "shard_size": int},
    "components": {name: float for name in COMPONENTS},
    "objects": {"shapes": list, "colors": list, "backgrounds": list, "patterns": list, "counts": list,
                "size": list, "crowded_count": list},
    "off_task": {"shapes": list, "colors": list, "backgrounds": list},
    "palette": None,  # free keys: colour name -> [r, g, b]
    "captions": {"templates": list, "generic": list, "crowded": list, "text": list, "drop": float, "noise": list,
                 "noise_prob": float},
    "evalsets": {"train_per_class": int, "test_per_class": int, "imagenet_like": str},
    "tasks": list,
    "teacher_corpus": {"size": int, "components": {name: float for name in COMPONENTS}, "caption_drop": float,
                       "caption_noise_prob": float},
    "teachers": {"l14": _TEACHER, "b32": _TEACHER},
}
# keys a world file may leave out, and their values then (worlds written before these keys existed still load)
OPTIONAL: dict[str, dict[str, Any]] = {
    "teachers.l14": {"vision": "vit"},
    "teachers.b32": {"vision": "vit"},
    "captions": {"crowded": ["{color} shapes"], "text": ["{color}"], "drop": 0.0, "noise": [], "noise_prob": 0.0},
    # < 0: the corpus's captions are as noisy as the pool's (captions.drop, captions.noise_prob)
    "teacher_corpus": {"caption_drop": -1.0, "caption_noise_prob": -1.0},
}
_TASK_KEYS = {"name": str, "attribute": str, "classes": list, "templates": list}
TEACHER_DIMS = {"l14": 768, "b32": 512}


@dataclass(frozen=True)
class World:
    """A validated world: the merged TOML as a dict plus where it came from and its fingerprint."""

    data: dict[str, Any]
    source: str
    quick: bool

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def seed(self) -> int:
        return int(self.data["world"]["seed"])

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the merged world: two builds mix only when this is equal."""
        text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def corpus_view(self) -> World:
        """This world as the teachers' corpus is rendered: its captions' drop and noise are
        ``teacher_corpus.caption_drop`` / ``caption_noise_prob`` where set (a curated corpus beside a noisy pool)."""
        corpus, caps = self.data["teacher_corpus"], dict(self.data["captions"])
        if corpus["caption_drop"] >= 0:
            caps["drop"] = corpus["caption_drop"]
        if corpus["caption_noise_prob"] >= 0:
            caps["noise_prob"] = corpus["caption_noise_prob"]
        return World({**self.data, "captions": caps}, self.source, self.quick)

    def task(self, name: str) -> dict[str, Any]:
        return next(t for t in self.data["tasks"] if t["name"] == name)


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise PluginError(f"--world {path}: file does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(f"--world {path}: not valid TOML ({exc})") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _type_ok(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_table(src: str, path: str, table: Any, schema: dict[str, Any]) -> None:
    if not isinstance(table, dict):
        raise PluginError(f"{src}: [{path}] must be a table")
    for key in table:
        if key not in schema:
            raise PluginError(f"{src}: unknown key {path}.{key}; expected one of {', '.join(schema)}")
    for key, expected in schema.items():
        where = f"{path}.{key}"
        if key not in table and path.endswith("components"):
            table[key] = 0.0  # a component left out has no share
        if key not in table and key in OPTIONAL.get(path, {}):
            table[key] = copy.deepcopy(OPTIONAL[path][key])
        if key not in table:
            raise PluginError(f"{src}: missing key {where}")
        value = table[key]
        if isinstance(expected, dict):
            _check_table(src, where, value, expected)
        elif expected is not None and not _type_ok(value, expected):
            raise PluginError(f"{src}: {where} = {value!r} must be {expected.__name__}")


def _err(src: str, key: str, why: str) -> PluginError:
    return PluginError(f"{src}: {key}: {why}")


def _range(src: str, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise _err(src, key, f"{value} is out of range; expected {low} to {high}")


def _str_list(src: str, key: str, value: list, allowed: tuple[str, ...] | None = None, min_len: int = 1) -> None:
    if len(value) < min_len:
        raise _err(src, key, f"needs at least {min_len} entries")
    for item in value:
        if not isinstance(item, str) or not item:
            raise _err(src, key, f"{item!r} must be a non-empty string")
        if allowed is not None and item not in allowed and not item.startswith("glyph:"):
            raise _err(src, key, f"{item!r} is not known; expected one of {', '.join(allowed)} or glyph:<char>")
        if item.startswith("glyph:") and len(item) != len("glyph:") + 1:
            raise _err(src, key, f"{item!r}: a glyph is one character, e.g. glyph:A")
    if len(set(value)) != len(value):
        raise _err(src, key, "has duplicate entries")


def _pair(src: str, key: str, value: list, low: int, high: int) -> None:
    if len(value) != 2 or not all(_type_ok(v, int) for v in value) or value[0] > value[1]:
        raise _err(src, key, f"{value!r} must be [min, max] integers with min <= max")
    _range(src, key, value[0], low, high)
    _range(src, key, value[1], low, high)


def _shares(src: str, key: str, shares: dict[str, float]) -> None:
    for name, value in shares.items():
        _range(src, f"{key}.{name}", value, 0.0, 1.0)
    total = sum(shares.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise _err(src, key, f"shares sum to {total:.6g}; they must sum to 1")


def _template_fields(src: str, key: str, template: str, allowed: tuple[str, ...]) -> None:
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise _err(src, key, f"{template!r} is not a valid template ({exc})") from None
    for name in fields:
        if name not in allowed:
            raise _err(src, key, f"{template!r} uses {{{name}}}; allowed: {', '.join('{' + a + '}' for a in allowed)}")


def validate(data: dict[str, Any], src: str) -> None:
    """Raise PluginError naming the key for anything the build could not honour."""
    for key in data:
        if key not in _SCHEMA:
            raise PluginError(f"{src}: unknown table or key [{key}]; expected one of {', '.join(_SCHEMA)}, quick")
    for key, schema in _SCHEMA.items():
        if key not in data:
            raise PluginError(f"{src}: missing [{key}]")
        if isinstance(schema, dict):
            _check_table(src, key, data[key], schema)
    world, pool, objects, off = data["world"], data["pool"], data["objects"], data["off_task"]
    size = world["image_size"]
    _range(src, "world.image_size", size, 16, 256)
    _range(src, "world.jpeg_quality", world["jpeg_quality"], 1, 95)
    _range(src, "world.seed", world["seed"], 0, 2**32 - 1)
    _range(src, "pool.size", pool["size"], 1, 10**8)
    _range(src, "pool.shard_size", pool["shard_size"], 1, pool["size"])
    _shares(src, "components", data["components"])
    _shares(src, "teacher_corpus.components", data["teacher_corpus"]["components"])
    _range(src, "teacher_corpus.size", data["teacher_corpus"]["size"], 1, 10**8)

    palette = data["palette"]
    if not isinstance(palette, dict) or not palette:
        raise _err(src, "palette", "must be a table of colour name -> [r, g, b]")
    for name, rgb in palette.items():
        if not (isinstance(rgb, list) and len(rgb) == 3 and all(_type_ok(c, int) and 0 <= c <= 255 for c in rgb)):
            raise _err(src, f"palette.{name}", f"{rgb!r} must be [r, g, b] with integers 0-255")
    colours = tuple(palette)
    backgrounds_known = colours + TEXTURE_BACKGROUNDS
    _str_list(src, "objects.shapes", objects["shapes"], SHAPES)
    _str_list(src, "objects.colors", objects["colors"], colours)
    _str_list(src, "objects.backgrounds", objects["backgrounds"], backgrounds_known)
    _str_list(src, "objects.patterns", objects["patterns"], PATTERNS)
    _str_list(src, "off_task.shapes", off["shapes"], SHAPES, min_len=0)
    _str_list(src, "off_task.colors", off["colors"], colours, min_len=0)
    _str_list(src, "off_task.backgrounds", off["backgrounds"], backgrounds_known, min_len=0)
    for part in ("shapes", "colors", "backgrounds"):
        both = set(objects[part]) & set(off[part])
        if both:
            raise _err(src, f"off_task.{part}", f"{sorted(both)} also in objects.{part}; off-task values must be "
                                                f"absent from the on-task ones")
    counts = objects["counts"]
    if not counts or not all(_type_ok(c, int) and 1 <= c <= len(NUMBER_WORDS) - 1 for c in counts) \
            or len(set(counts)) != len(counts):
        raise _err(src, "objects.counts", f"{counts!r} must be distinct integers 1-{len(NUMBER_WORDS) - 1}")
    _pair(src, "objects.size", objects["size"], 3, size)
    _pair(src, "objects.crowded_count", objects["crowded_count"], 2, 64)
    if max(counts) * objects["size"][0] > 2 * size:
        raise _err(src, "objects.counts", f"{max(counts)} objects of at least {objects['size'][0]} px do not fit "
                                          f"a {size} px image (world.image_size)")
    if data["components"]["off_task"] > 0 and not (off["shapes"] or off["colors"] or off["backgrounds"]):
        raise _err(src, "off_task", "components.off_task > 0 needs at least one off-task shape, colour or background")

    caps = data["captions"]
    _str_list(src, "captions.templates", caps["templates"])
    for i, template in enumerate(caps["templates"]):
        _template_fields(src, f"captions.templates[{i}]", template, CAPTION_FIELDS)
    for part in ("generic", "crowded", "text"):
        _str_list(src, f"captions.{part}", caps[part])
        for i, template in enumerate(caps[part]):
            _template_fields(src, f"captions.{part}[{i}]", template, CAPTION_FIELDS)
    _range(src, "captions.drop", caps["drop"], 0.0, 1.0)
    _range(src, "captions.noise_prob", caps["noise_prob"], 0.0, 1.0)
    _str_list(src, "captions.noise", caps["noise"], min_len=0)
    if caps["noise_prob"] > 0 and not caps["noise"]:
        raise _err(src, "captions.noise_prob", f"{caps['noise_prob']} > 0 needs at least one captions.noise token")
    corpus = data["teacher_corpus"]
    for key in ("caption_drop", "caption_noise_prob"):
        if corpus[key] != -1.0:
            _range(src, f"teacher_corpus.{key}", corpus[key], 0.0, 1.0)
    if corpus["caption_noise_prob"] > 0 and not caps["noise"]:
        raise _err(src, "teacher_corpus.caption_noise_prob",
                   f"{corpus['caption_noise_prob']} > 0 needs at least one captions.noise token")

    tasks = data["tasks"]
    if not tasks:
        raise _err(src, "tasks", "at least one [[tasks]] is needed")
    names = []
    on_task = {"shape": objects["shapes"], "color": objects["colors"], "background": objects["backgrounds"],
               "pattern": objects["patterns"], "count": counts}
    for i, task in enumerate(tasks):
        _check_table(src, f"tasks[{i}]", task, _TASK_KEYS)
        key = f"tasks[{i}] ({task['name']})"
        if not _NAME.match(task["name"]):
            raise _err(src, f"tasks[{i}].name", f"{task['name']!r} must be lowercase letters, digits, _")
        names.append(task["name"])
        if task["attribute"] not in ATTRIBUTES:
            raise _err(src, f"{key}.attribute", f"{task['attribute']!r}; expected one of {', '.join(ATTRIBUTES)}")
        classes = task["classes"]
        if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
            raise _err(src, f"{key}.classes", "needs at least two distinct classes")
        for c in classes:
            if c not in on_task[task["attribute"]]:
                raise _err(src, f"{key}.classes", f"{c!r} is not among the on-task values of {task['attribute']} "
                                                  f"({on_task[task['attribute']]})")
        _str_list(src, f"{key}.templates", task["templates"])
        for template in task["templates"]:
            _template_fields(src, f"{key}.templates", template, ("c",))
            if "{c}" not in template:
                raise _err(src, f"{key}.templates", f"{template!r} has no {{c}} placeholder")
    if len(set(names)) != len(names):
        raise _err(src, "tasks", f"task names must be unique, got {names}")
    ev = data["evalsets"]
    _range(src, "evalsets.train_per_class", ev["train_per_class"], 1, 10**6)
    _range(src, "evalsets.test_per_class", ev["test_per_class"], 1, 10**6)
    if ev["imagenet_like"] not in names:
        raise _err(src, "evalsets.imagenet_like", f"{ev['imagenet_like']!r} is not a task; tasks: {', '.join(names)}")

    for arch, cfg in data["teachers"].items():
        key = f"teachers.{arch}"
        if cfg["vision"] not in ("vit", "resnet"):
            raise _err(src, f"{key}.vision", f"{cfg['vision']!r}; expected vit or resnet")
        if cfg["embed_dim"] != TEACHER_DIMS[arch]:
            raise _err(src, f"{key}.embed_dim", f"{cfg['embed_dim']}; DataComp's {arch} embeddings are "
                                                f"{TEACHER_DIMS[arch]}-d, the metadata layout needs that width")
        resnet = cfg["vision"] == "resnet"
        for k in ("width", "text_width"):
            if resnet and k == "width":  # the stem width; the attention pool is 32x wider, heads of 64
                _range(src, f"{key}.{k}", cfg[k], 8, 4096)
                if cfg[k] % 2:
                    raise _err(src, f"{key}.{k}", f"{cfg[k]} must be even (a resnet's attention pool has heads of 64)")
                continue
            _range(src, f"{key}.{k}", cfg[k], 32, 4096)
            if cfg[k] % 32:
                raise _err(src, f"{key}.{k}", f"{cfg[k]} must be a multiple of 32 (attention heads of 32)")
        for k in ("layers", "text_layers", "epochs", "batch_size"):
            _range(src, f"{key}.{k}", cfg[k], 1, 10**6)
        _range(src, f"{key}.context_length", cfg["context_length"], 8, 77)
        _range(src, f"{key}.lr", cfg["lr"], 1e-8, 1.0)
        _range(src, f"{key}.warmup", cfg["warmup"], 0, 10**6)
        if cfg["vision"] == "resnet" and size % 32:
            raise _err(src, f"{key}.vision", f"a resnet teacher needs world.image_size divisible by 32, got {size}")
        if size % cfg["patch_size"] or cfg["patch_size"] < 1:
            raise _err(src, f"{key}.patch_size", f"{cfg['patch_size']} must divide world.image_size ({size})")
        if cfg["batch_size"] > data["teacher_corpus"]["size"]:
            raise _err(src, f"{key}.batch_size", f"{cfg['batch_size']} exceeds teacher_corpus.size")


def load_world(path: str | None = None, quick: bool = False, seed: int | None = None) -> World:
    """Read, merge ``[quick]`` when asked, apply ``--seed`` and validate; PluginError names the key."""
    src = WORLDS[path] if path in WORLDS and not os.path.exists(path) else path or DEFAULT_WORLD
    raw = _load_toml(src)
    quick_table = raw.pop("quick", {}) if isinstance(raw, dict) else {}
    if not isinstance(quick_table, dict):
        raise PluginError(f"{src}: [quick] must be a table")
    data = raw
    if quick:
        keep = quick_table.get("tasks")
        over = {k: v for k, v in quick_table.items() if k != "tasks"}
        for key in over:
            if key not in _SCHEMA or key == "tasks":
                raise PluginError(f"{src}: unknown key quick.{key}; [quick] may override "
                                  f"{', '.join(k for k in _SCHEMA if k != 'tasks')} and list tasks")
        data = _merge(raw, over)
        if keep is not None:
            if not isinstance(keep, list) or not all(isinstance(n, str) for n in keep):
                raise PluginError(f"{src}: quick.tasks must be a list of task names")
            known = [t.get("name") for t in data.get("tasks", []) if isinstance(t, dict)]
            for name in keep:
                if name not in known:
                    raise PluginError(f"{src}: quick.tasks: {name!r} is not a task; "
                                      f"tasks: {', '.join(map(str, known))}")
            data["tasks"] = [t for t in data["tasks"] if t.get("name") in keep]
            if data.get("evalsets", {}).get("imagenet_like") not in keep and keep:
                data["evalsets"]["imagenet_like"] = keep[0]
    if seed is not None:
        data.setdefault("world", {})["seed"] = seed
    validate(data, src + (" (with [quick])" if quick else ""))
    return World(data=data, source=src, quick=quick)


def class_name(attribute: str, value: Any) -> str:
    """The words a class is called by in captions and zero-shot prompts."""
    if attribute == "count":
        return NUMBER_WORDS[int(value)]
    value = str(value)
    if value.startswith("glyph:"):
        return f"letter {value[len('glyph:'):]}"
    return value.replace("_", " ")


def component_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    """Exact counts per component: floor of each share, the remainder by largest fraction (ties by order)."""
    raw = {name: shares.get(name, 0.0) * total for name in COMPONENTS}
    counts = {name: int(math.floor(v)) for name, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(COMPONENTS, key=lambda n: (-(raw[n] - counts[n]), COMPONENTS.index(n)))
    for name in order[:left]:
        counts[name] += 1
    return counts
