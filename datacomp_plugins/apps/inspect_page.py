"""One self-contained HTML page that shows what a filter kept and dropped.

Per uid file: a histogram of each score over the pool with the file's cut-off marked, and grids of samples
just above and just below the cut-off, at both extremes and at random (thumbnail, caption, scores). For two
files: samples only one of them keeps. With a truth folder (``<stem>.parquet`` with ``uid`` and
``component``): the share of each component each file kept. Thumbnails are embedded as data URLs, so the
page opens from disk with no network; the number of images is bounded, and the sampling is seeded.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.select.masks import first_occurrence, index_in, isin

GROUP = 12  # samples per grid
THUMB = 128  # longest side of an embedded thumbnail, pixels
MAX_IMAGES = 400
BINS = 40


@dataclass
class FileView:
    """One uid file as the page sees it."""

    path: str
    count: int  # uids in the file (sorted unique)
    kept: np.ndarray  # mask over pool rows: first occurrences whose uid is in the file
    sidecar: dict | None
    cutoffs: dict[str, float | None] = field(default_factory=dict)  # score -> lowest kept, when it separates
    primary: str = ""


@dataclass
class PageSummary:
    """What the page holds (the command prints it; tests check it)."""

    out: str
    pool_samples: int
    images: int
    shown: int
    bytes: int
    seconds: float
    files: list[dict[str, Any]]
    notes: list[str]


def clean_cutoff(values: np.ndarray, kept: np.ndarray, eligible: np.ndarray) -> float | None:
    """The lowest kept value when the file is exactly {score >= it} among the eligible samples, else None."""
    finite = eligible & np.isfinite(values)
    if not kept.any() or (kept & ~finite).any():
        return None
    low = float(values[kept].min())
    return low if int((finite & (values >= low)).sum()) == int(kept.sum()) else None


def _histogram_svg(values: np.ndarray, kept: np.ndarray, eligible: np.ndarray, name: str,
                   cutoff: float | None, window: tuple[float, float] | None = None) -> str:
    """Pool and kept counts per bin, with a y axis (counts) and the cut-off marked; ``window`` limits the
    x range (the zoomed chart), counting the samples outside it in the title."""
    finite = eligible & np.isfinite(values)
    data = values[finite].astype(np.float64)
    if len(data) == 0:
        return f'<p class="note">{html.escape(name)}: no scorable samples</p>'
    low, high = (float(data.min()), float(data.max())) if window is None else window
    if high <= low:
        high = low + 1e-6
    edges = np.linspace(low, high, BINS + 1)
    pool_counts = np.histogram(data, edges)[0]
    kept_counts = np.histogram(values[kept & finite].astype(np.float64), edges)[0]
    width, height, pad, left_pad = 440, 130, 18, 44
    top = max(1, int(pool_counts.max()))
    bar = (width - left_pad - pad) / BINS
    outside = int(((data < low) | (data > high)).sum())
    label = name if window is None else f"{name}, zoomed on the cut-off ({outside} samples outside)"
    parts = [f'<svg class="hist{"" if window is None else " zoom"}" width="{width}" height="{height + 2 * pad}" '
             f'role="img" aria-label="histogram of {html.escape(label)}">']
    # y axis: a line with 0, the middle and the tallest bar's count
    parts.append(f'<line x1="{left_pad - 2}" x2="{left_pad - 2}" y1="{pad}" y2="{pad + height}" class="axis"/>')
    for count in sorted({0, top // 2, top}):
        y = pad + height - height * count / top
        parts.append(f'<line x1="{left_pad - 5}" x2="{left_pad - 2}" y1="{y:.1f}" y2="{y:.1f}" class="axis"/>'
                     f'<text x="{left_pad - 7}" y="{y + 4:.1f}" text-anchor="end" class="ytick">{count}</text>')
    for i, (p, k) in enumerate(zip(pool_counts, kept_counts, strict=True)):
        x = left_pad + i * bar
        hp, hk = height * p / top, height * k / top
        parts.append(f'<rect x="{x:.1f}" y="{pad + height - hp:.1f}" width="{bar - 1:.1f}" height="{hp:.1f}" '
                     f'class="pool"><title>[{edges[i]:.4g}, {edges[i + 1]:.4g}): {p} in pool, {k} kept</title></rect>')
        if k:
            parts.append(f'<rect x="{x:.1f}" y="{pad + height - hk:.1f}" width="{bar - 1:.1f}" '
                         f'height="{hk:.1f}" class="kept"/>')
    if cutoff is not None and low <= cutoff <= high:
        cx = left_pad + (cutoff - low) / (high - low) * (width - left_pad - pad)
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{pad - 4}" y2="{pad + height}" class="cut"/>')
        left = cx > 0.6 * width  # keep the label inside the chart
        parts.append(f'<text x="{cx - 3 if left else cx + 3:.1f}" y="{pad + 6}" class="cutlabel" '
                     f'text-anchor="{"end" if left else "start"}">cut-off {cutoff:.4g}</text>')
    parts.append(f'<text x="{left_pad}" y="{height + 2 * pad - 2}">{low:.4g}</text>')
    parts.append(f'<text x="{width - pad}" y="{height + 2 * pad - 2}" text-anchor="end">{high:.4g}</text>')
    parts.append(f'<text x="{(left_pad + width - pad) / 2:.0f}" y="{height + 2 * pad - 2}" text-anchor="middle">'
                 f'{html.escape(name if window is None else name + " (zoom)")}</text></svg>')
    return "".join(parts)


def zoom_window(values: np.ndarray, kept: np.ndarray, eligible: np.ndarray,
                cutoff: float | None) -> tuple[float, float] | None:
    """The x range of the zoomed histogram: the scores of the pool's samples ranked around the cut-off, as
    many below it as are kept (at least 2% of the pool each side), so the kept range fills about half the
    chart whatever the tails. None without a single cut-off."""
    finite = np.sort(values[eligible & np.isfinite(values)].astype(np.float64))
    if cutoff is None or len(finite) < 2:
        return None
    n = len(finite)
    rank = int(np.searchsorted(finite, cutoff, side="left"))  # samples below the cut-off
    span = max(int((kept & eligible & np.isfinite(values)).sum()), int(np.ceil(0.02 * n)), 1)
    low = finite[max(0, rank - span)]
    high = finite[min(n - 1, rank + span - 1)]
    return (float(low), float(high)) if high > low else None


def _pick_lowest(values: np.ndarray, mask: np.ndarray, n: int, highest: bool = False) -> np.ndarray:
    rows = np.flatnonzero(mask & np.isfinite(values))
    if len(rows) == 0:
        return rows
    order = np.argsort(values[rows], kind="stable")
    if highest:
        order = order[::-1]
    return rows[order[:n]]


def _random(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    rows = np.flatnonzero(mask)
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False)) if len(rows) else rows


class PageBuilder:
    """Collects the sections, then embeds the captions and thumbnails of the rows shown."""

    def __init__(self, uids: np.ndarray, columns: dict[str, np.ndarray], shard_index: np.ndarray,
                 pool, images=None, seed: int = 0, group: int = GROUP, labels: np.ndarray | None = None) -> None:
        self.uids, self.columns, self.shard_index = uids, columns, shard_index
        self.labels = labels  # the component of each row, with --truth
        self.pool, self.images = pool, images
        self.rng = np.random.default_rng(seed)
        self.group = group
        self.sections: list[str] = []
        self.grids: list[tuple[str, np.ndarray, list[FileView]]] = []  # placeholder id, rows, files for badges

    def grid(self, rows: np.ndarray, files: Sequence[FileView]) -> str:
        marker = f"@@GRID{len(self.grids)}@@"
        self.grids.append((marker, np.asarray(rows, dtype=np.int64), list(files)))
        return marker

    def render(self, body: str, title: str, notes: Sequence[str]) -> tuple[str, int, int]:
        """Fill the grids in: captions from the metadata, thumbnails from the tars, then the HTML."""
        shown = np.unique(np.concatenate([rows for _, rows, _ in self.grids])) if self.grids else np.zeros(0, int)
        captions = self._captions(shown)
        thumbs = self._thumbnails(shown)
        images = 0
        for marker, rows, files in self.grids:
            cards = []
            for row in rows:
                cards.append(self._card(int(row), captions.get(int(row), ""), thumbs.get(int(row)), files))
                images += int(row) in thumbs
            body = body.replace(marker, '<div class="grid">' + "".join(cards) + "</div>"
                                if cards else '<p class="note">no samples in this group</p>')
        note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        page = page_template().substitute(title=html.escape(title), notes=note_html, body=body)
        return page, images, len(shown)

    def _card(self, row: int, caption: str, thumb: tuple[str, str] | None, files: Sequence[FileView]) -> str:
        from datacomp_plugins.core.uids import to_hex

        uid = to_hex(self.uids[row : row + 1])[0].decode()
        scores = " · ".join(f"{name} {self.columns[name][row]:.4g}" for name in self.columns)
        badges = "".join(f'<span class="badge {"in" if f.kept[row] else "out"}">{"kept" if f.kept[row] else "dropped"}'
                         f' by {html.escape(_short(f.path))}</span>' for f in files)
        if thumb:
            mime, data = thumb
            pixelated = ' class="pixelated"' if mime == "image/png" else ""
            image = f'<img alt="sample {uid}" data-uid="{uid}"{pixelated} src="data:{mime};base64,{data}">'
        else:  # no box at all on a page without shards; a marked gap where a shown sample has no image
            image = "" if self.images is None else '<div class="noimg">no image</div>'
        component = ""
        if self.labels is not None:
            name = str(self.labels[row]) or "(no label)"
            component = f'<span class="component">component: {html.escape(name)}</span>'
        return (f'<figure class="card">{image}<figcaption><span class="caption">{html.escape(caption[:200])}'
                f'</span>{component}<span class="scores">{scores}</span>{badges}<code>{uid}</code></figcaption>'
                '</figure>')

    def _captions(self, rows: np.ndarray) -> dict[int, str]:
        """The ``text`` column of the metadata, read only for the shards that hold shown rows."""
        out: dict[int, str] = {}
        if len(rows) == 0:
            return out
        offsets = np.concatenate([[0], np.cumsum(np.bincount(self.shard_index, minlength=len(self.pool.shards)))])
        for index in np.unique(self.shard_index[rows]):
            shard = self.pool.shards[int(index)]
            try:
                table = self.pool.read_columns(shard, ["text"])
            except PluginError:
                continue  # captions are optional: a pool without a text column still shows scores
            text = table.column("text")
            for row in rows[self.shard_index[rows] == index]:
                value = text[int(row - offsets[index])].as_py()
                out[int(row)] = "" if value is None else str(value)
        return out

    def _thumbnails(self, rows: np.ndarray) -> dict[int, tuple[str, str]]:
        """Base64 JPEG thumbnails of the shown rows that have an image in the tars."""
        if self.images is None or len(rows) == 0:
            return {}
        from datacomp_plugins.core.registry import require

        require("inspect", "--shards: thumbnails")
        from PIL import Image, UnidentifiedImageError

        from datacomp_plugins.core.uids import to_hex

        hexes = {to_hex(self.uids[r : r + 1])[0].decode(): int(r) for r in rows}
        refs = self.images.locate(hexes)
        data = self.images.read(refs.values())
        out = {}
        for uid, ref in refs.items():
            try:
                with Image.open(io.BytesIO(data[ref])) as image:
                    out[hexes[uid]] = thumbnail(image.convert("RGB"))
            except (UnidentifiedImageError, OSError):
                continue  # an undecodable image is shown as "no image", like a missing one
        if hexes and not refs:
            raise PluginError(f"--shards {self.images.url}: none of the {len(hexes)} samples shown has an image "
                              f"there (no uid of the files matched); expected {SHARD_LAYOUT}")
        return out


SHARD_LAYOUT = ("the pool's webdataset tars in img2dataset's layout (<key>.jpg with <key>.json holding the uid, "
                "or <stem>.parquet with key and uid beside <stem>.tar) or DataComp's resharder's (<uid>-<j>.jpg)")


def thumbnail(image) -> tuple[str, str]:
    """(mime type, base64) of an embedded thumbnail. A small image (the mini DataComp's 32 px) is scaled up by
    a whole factor with nearest-neighbour pixels and kept lossless (PNG), so letters on a texture stay
    readable; a large one is shrunk to ``THUMB`` px as JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    side = max(image.size)
    if side * 2 <= THUMB:
        factor = THUMB // side
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
        image.save(buffer, format="PNG")
        return "image/png", base64.b64encode(buffer.getvalue()).decode("ascii")
    image.thumbnail((THUMB, THUMB))
    image.save(buffer, format="JPEG", quality=80)
    return "image/jpeg", base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


TRUTH_LAYOUT = ("truth labels: a .parquet file, or a folder of them, with columns uid (hex) and component "
                "(string), as the toy pool's labels.parquet and the mini DataComp's truth/ hold them")


def read_truth(folder: str, uids: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Component label per pool row from a parquet file or a folder of them (hex ``uid``, ``component``);
    '' if none. One layout for truth labels everywhere: the toy pool and the mini DataComp write it."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import parse_hex

    fs, root = fsspec.core.url_to_fs(folder)
    if fs.isfile(root) and root.endswith(".parquet"):
        files = [root]  # one file of labels, as the toy pool writes labels.parquet
    elif not fs.isdir(root):
        raise PluginError(f"--truth {folder}: no such file or directory; expected {TRUTH_LAYOUT}")
    else:
        files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
    if not files:
        raise PluginError(f"--truth {folder}: no .parquet files; expected {TRUTH_LAYOUT}")
    tables = []
    for path in files:
        try:
            with fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                missing = [c for c in ("uid", "component") if c not in parquet.schema_arrow.names]
                if missing:
                    raise PluginError(f"{path}: no column(s) {missing}; it has {parquet.schema_arrow.names}; "
                                      f"expected {TRUTH_LAYOUT}")
                table = parquet.read(columns=["uid", "component"])
            tables.append(table.select(["uid", "component"]).cast(pa.schema([("uid", pa.string()),
                                                                               ("component", pa.string())])))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise PluginError(f"--truth {path}: unreadable parquet ({exc}); expected {TRUTH_LAYOUT}") from None
    table = pa.concat_tables(tables)
    theirs = parse_hex(table.column("uid"), source=folder)
    labels = np.asarray(table.column("component").to_pylist(), dtype=object)
    row = index_in(uids, theirs)
    out = np.full(len(uids), "", dtype=object)
    found = row >= 0
    out[found] = labels[row[found]]
    out[~eligible] = ""
    return out


def build_page(uid_paths: Sequence[str], scores, out: str, shards: str | None = None, truth: str | None = None,
               seed: int = 0, group: int = GROUP, progress: bool = True) -> PageSummary:
    """Write the page to ``out`` (atomically); ``scores``: a :class:`~.pool_scores.PoolScores`."""
    from datacomp_plugins.apps.shard_images import ShardImages
    from datacomp_plugins.core.fileio import atomic_open
    from datacomp_plugins.core.uids import load_uid_file
    from datacomp_plugins.provenance import read_sidecar

    started = time.perf_counter()
    if not 1 <= len(uid_paths) <= 2:
        raise PluginError(f"inspect: expected one or two uid files, got {len(uid_paths)}")
    if group * (6 * len(uid_paths) + 4 * (len(uid_paths) == 2)) > MAX_IMAGES:  # 6 grids a file, 2 double ones
        raise PluginError(f"--per_group {group}: the page would show more than {MAX_IMAGES} samples")
    images = ShardImages(shards) if shards is not None else None
    arrays = [load_uid_file(p) for p in uid_paths]
    uids, columns, shard_index = scores.gather()
    eligible = first_occurrence(uids)
    labels = read_truth(truth, uids, eligible) if truth is not None else None
    notes = []
    if images is None:
        notes.append("No images: --shards was not given (a pool without image shards, e.g. the toy pool); "
                     "the page shows scores only.")
    builder = PageBuilder(uids, columns, shard_index, scores.pool, images, seed, group, labels)
    views = []
    for path, array in zip(uid_paths, arrays, strict=True):
        kept = isin(uids, np.asarray(array)) & eligible
        view = FileView(path, len(array), kept, read_sidecar(path))
        for name, values in columns.items():
            view.cutoffs[name] = clean_cutoff(values, kept, eligible)
        separating = [n for n, c in view.cutoffs.items() if c is not None]
        declared = [s.get("score") for s in (view.sidecar or {}).get("stages", []) if s.get("score") in columns]
        view.primary = (separating or declared or list(columns))[0]
        views.append(view)
    body = [_overview(views, int(eligible.sum()), scores)]
    if labels is not None:  # what was kept of each component first: it is what the page is read for
        body.append(_truth_section(views, labels, eligible))
    for letter, view in zip("AB", views, strict=False):
        body.append(_file_section(builder, letter, view, eligible))
    if len(views) == 2:
        body.append(_difference_section(builder, views, eligible))
    title = "What " + " and ".join(_short(v.path) for v in views) + " keep"
    page, shown_images, shown = builder.render("".join(body), title, notes)
    encoded = page.encode("utf-8")
    with atomic_open(out, "wb") as handle:
        handle.write(encoded)
    files = [{"path": v.path, "count": v.count, "in_pool": int(v.kept.sum()), "primary": v.primary,
              "cutoff": v.cutoffs.get(v.primary)} for v in views]
    return PageSummary(out, int(eligible.sum()), shown_images, shown, len(encoded),
                       time.perf_counter() - started, files, notes)


def _overview(views: Sequence[FileView], samples: int, scores) -> str:
    rows = []
    for letter, view in zip("AB", views, strict=False):
        made = ""
        if view.sidecar:
            params = view.sidecar.get("parameters") or {}
            made = html.escape(f"{view.sidecar.get('operation')} {params.get('name', '')}".strip())
        rows.append(f'<tr><td>{letter}</td><td><code>{html.escape(view.path)}</code></td>'
                    f'<td class="num"><span class="count" data-file="{html.escape(view.path)}">{view.count}</span>'
                    f'</td><td class="num">{int(view.kept.sum())}</td>'
                    f'<td class="num">{100.0 * int(view.kept.sum()) / samples if samples else 0:.2f}%</td>'
                    f'<td>{made or "no provenance sidecar"}</td></tr>')
    return (f'<section><h2>Overview</h2><p>Pool <code>{html.escape(scores.settings.metadata_dir)}</code>: '
            f'<span id="pool-samples">{samples}</span> samples; scores {", ".join(scores.names)} '
            f'({scores.settings.arch}).</p><table><tr><th></th><th>uid file</th><th>uids</th><th>in pool</th>'
            f'<th>share</th><th>made by</th></tr>{"".join(rows)}</table></section>')


def _file_section(builder: PageBuilder, letter: str, view: FileView, eligible: np.ndarray) -> str:
    values = builder.columns[view.primary]
    hists = "".join(_histogram_svg(v, view.kept, eligible, n, view.cutoffs.get(n))
                    for n, v in builder.columns.items())
    window = zoom_window(values, view.kept, eligible, view.cutoffs.get(view.primary))
    if window is not None:  # the kept range squeezed into a few bins above: a second chart around the cut-off
        hists += _histogram_svg(values, view.kept, eligible, view.primary, view.cutoffs.get(view.primary), window)
    stages = ""
    if view.sidecar and view.sidecar.get("stages"):
        items = "".join(f"<li>{html.escape(s['stage'])} by {html.escape(str(s.get('score')))} "
                        f"({html.escape(s['rule'])}): kept {s['kept']} of {s['in']}; lowest kept "
                        f"{_fmt(s.get('lowest_kept'))}, highest dropped {_fmt(s.get('highest_dropped'))}</li>"
                        for s in view.sidecar["stages"])
        stages = f"<p>Stages recorded in the sidecar:</p><ul>{items}</ul>"
    cut = view.cutoffs.get(view.primary)
    cut_text = (f"kept exactly the samples with {view.primary} ≥ {cut:.6g}" if cut is not None else
                f"not a single cut-off on any score; grids ordered by {view.primary}")
    dropped = eligible & ~view.kept
    n = builder.group
    groups = [
        (f"Just above the cut-off (lowest {view.primary} kept)", _pick_lowest(values, view.kept, n)),
        (f"Just below the cut-off (highest {view.primary} dropped)", _pick_lowest(values, dropped, n, True)),
        (f"Highest {view.primary} in the pool", _pick_lowest(values, eligible, n, True)),
        (f"Lowest {view.primary} in the pool", _pick_lowest(values, eligible, n)),
        ("Kept, at random", _random(builder.rng, view.kept, n)),
        ("Dropped, at random", _random(builder.rng, dropped, n)),
    ]
    grids = "".join(f"<h3>{html.escape(t)}</h3>{builder.grid(rows, [view])}" for t, rows in groups)
    return (f'<section><h2>{letter}: {html.escape(_short(view.path))}</h2><p>{html.escape(cut_text)}.</p>{stages}'
            f'<div class="hists">{hists}</div><p class="legend"><span class="sw pool"></span> pool '
            f'<span class="sw kept"></span> kept <span class="sw cut"></span> cut-off</p>{grids}</section>')


def _difference_section(builder: PageBuilder, views: Sequence[FileView], eligible: np.ndarray) -> str:
    a, b = views
    only_a, only_b = a.kept & ~b.kept, b.kept & ~a.kept
    both = a.kept & b.kept
    parts = [f'<section><h2>A versus B</h2><p>Both keep <span class="count" data-set="both">{int(both.sum())}'
             f'</span>; only A keeps <span class="count" data-set="a_only">{int(only_a.sum())}</span>; only B '
             f'keeps <span class="count" data-set="b_only">{int(only_b.sum())}</span> (pool samples).</p>']
    for label, mask in ((f"Only A ({_short(a.path)}) keeps", only_a), (f"Only B ({_short(b.path)}) keeps", only_b)):
        rows = _random(builder.rng, mask, 2 * builder.group)
        rows = rows[np.argsort(builder.columns[a.primary][rows], kind="stable")] if len(rows) else rows
        parts.append(f"<h3>{html.escape(label)}, at random (by {a.primary})</h3>{builder.grid(rows, views)}")
    return "".join(parts) + "</section>"


def _truth_section(views: Sequence[FileView], labels: np.ndarray, eligible: np.ndarray) -> str:
    names = sorted({str(x) for x in labels[eligible]})
    head = "".join(f"<th>{html.escape(_short(v.path))}</th>" for v in views)
    rows = []
    for name in names:
        members = eligible & (labels == name)
        total = int(members.sum())
        cells = "".join(f'<td class="num" data-component="{html.escape(name)}">'
                        f'{100.0 * int((v.kept & members).sum()) / total:.1f}% ({int((v.kept & members).sum())})</td>'
                        for v in views)
        rows.append(f"<tr><td>{html.escape(name or '(no label)')}</td><td class='num'>{total}</td>{cells}</tr>")
    return (f"<section><h2>Share of each component kept</h2><table><tr><th>component</th><th>pool</th>{head}"
            f"</tr>{''.join(rows)}</table></section>")



@functools.cache
def page_template() -> string.Template:
    """The page's HTML, CSS and script (templates/inspect_page.html, shipped as package data), with ``$title``,
    ``$notes`` and ``$body`` to fill. Its script records script errors from the first moment and, once
    everything has loaded, writes whether every image decoded into the page itself (``#selfcheck``): a headless
    browser's DOM dump then carries the result."""
    text = resources.files("datacomp_plugins.apps").joinpath("templates", "inspect_page.html").read_text("utf-8")
    return string.Template(text)
