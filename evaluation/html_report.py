"""Self-contained HTML listening reports: ``report.html`` of ``evaluate`` and ``benchmark``, ``index.html`` of a
``render`` folder.

One file that works offline from its folder: plain HTML, CSS and JavaScript (no framework, no network fetch);
images are embedded as compact palette PNGs (``data:`` URIs), audio is referenced by its path relative to the
page. Every string that comes from a prompt, a file name or a sidecar goes through :func:`escape`. Clips are
listed worst first by the page's key metric; the table's headers re-sort the table and the clip cards.

Per clip pair: reference and accelerated players with an A/B button that swaps them at the same playing
position, the reference and test log-mel spectrograms on one colour scale and their difference on a symmetric
one, the pair's metrics and cost (wall time, NFE), and SADA's sparsity map (which steps ran in full, pruned or
were skipped; which latent time frames and frequency bands pruned steps recomputed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import soundfile as sf
from matplotlib import colormaps
from PIL import Image

from sada_audio.audio import write_text
from sada_audio.render import INDEX_NAME, read_index_lines
from sada_audio.render.guard import GENERATOR_META, INDEX_PAGE_NAME

from .evaluate import Evaluation, key_metric, pool_frames
from .metrics import METRICS, log_mel_spectrogram
from .sparsity_figure import MODE_COLOURS, step_time_grid
from .tables import format_number

__all__ = [
    "COST_COLUMNS",
    "HTML_NAME",
    "LEVELS",
    "RENDER_COLUMNS",
    "RENDER_INDEX_NAME",
    "Column",
    "Listing",
    "audio_thumbnail",
    "escape",
    "evaluation_page",
    "listing_section",
    "listings_block",
    "page",
    "palette_png",
    "read_json_object",
    "relative_url",
    "render_index_page",
    "sort_worst_first",
    "sparsity_panels",
    "spectrogram_panels",
    "write_evaluation_html",
    "write_render_index",
]

logger = logging.getLogger(__name__)

#: Name of the HTML report next to ``report.md`` / ``results.md``.
HTML_NAME = "report.html"
#: Colours of an embedded image (spectrograms, sparsity maps).
LEVELS = 32


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes (``<``, ``>``, ``&``, both quotes)."""
    return html.escape(str(value), quote=True)


def relative_url(target: Path, page_dir: Path) -> str:
    """The URL of the file ``target`` relative to a page in ``page_dir``: path segments percent-encoded (so
    ``#``, ``?``, ``%``, spaces and quotes in names stay part of the name), ``/``-separated."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    return "/".join(quote(part, safe="") for part in Path(relative).parts)


def _palette(name: str, levels: int = LEVELS) -> np.ndarray:
    """``levels`` RGB entries (uint8) evenly spaced along a matplotlib colour map."""
    return (colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3] * 255).round().astype(np.uint8)


def palette_png(values: np.ndarray, colour_map: str, low: float, high: float) -> bytes:
    """A 2-D array as an indexed PNG of :data:`LEVELS` colours from ``colour_map`` (``low`` to ``high``), rows
    bottom to top. Few levels keep a report small (an indexed PNG of few colours compresses well)."""
    span = (high - low) or 1.0
    scaled = np.round((np.asarray(values, dtype=np.float32) - low) / span * (LEVELS - 1))
    indices = np.clip(np.nan_to_num(scaled), 0, LEVELS - 1).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(indices[::-1]), mode="P")
    image.putpalette(_palette(colour_map).tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _legend(colour_map: str, low: float, high: float, unit: str) -> str:
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in _palette(colour_map, 9))
    return (
        f'<span class="legend"><span>{low:.3g}</span><span class="bar" style="background:linear-gradient'
        f'(to right, {stops})"></span><span>{high:.3g} {escape(unit)}</span></span>'
    )


def _image(png: bytes, alt: str, css_class: str = "spec") -> str:
    return f'<img class="{css_class}" alt="{escape(alt)}" src="{_data_uri(png)}">'


def spectrogram_panels(reference: np.ndarray | None, test: np.ndarray) -> str:
    """Log-mel panels: reference and test on one scale (the range of both), and test - reference on a
    symmetric scale; a single clip (``reference`` None) gets one panel."""
    test = np.asarray(test, dtype=np.float32)
    if reference is None:
        low, high = float(test.min()), float(test.max())
        image = _image(palette_png(test, "magma", low, high), "log-mel spectrogram")
        return _figure(image, "log-mel", "magma", low, high)
    reference = np.asarray(reference, dtype=np.float32)
    low, high = float(min(reference.min(), test.min())), float(max(reference.max(), test.max()))
    difference = test - reference
    limit = float(np.abs(difference).max()) or 1.0
    return "".join(
        [
            _figure(_image(palette_png(reference, "magma", low, high), "reference"), "reference", "magma", low, high),
            _figure(_image(palette_png(test, "magma", low, high), "accelerated"), "accelerated", "magma", low, high),
            _figure(
                _image(palette_png(difference, "coolwarm", -limit, limit), "difference"),
                "accelerated - reference",
                "coolwarm",
                -limit,
                limit,
            ),
        ]
    )


def _figure(image: str, caption: str, colour_map: str, low: float, high: float) -> str:
    return f"<figure>{image}<figcaption>{escape(caption)} {_legend(colour_map, low, high, 'ln')}</figcaption></figure>"


def sparsity_panels(stats: dict[str, Any]) -> str:
    """SADA's sparsity map as small embedded images: the step modes, step x latent time (share of each frame
    recomputed), and latent time x frequency (recomputed share over the pruned steps). Statistics that do not
    have the shape :class:`~sada_audio.method.sparsity_map.SparsityMap` writes (a sidecar from elsewhere) are
    reported in one line instead."""
    try:
        return _sparsity_panels(stats)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        logger.warning("sparsity map not shown: unexpected SADA statistics (%s)", error)
        return '<p class="caption">SADA statistics present but not readable as a sparsity map.</p>'


def _sparsity_panels(stats: dict[str, Any]) -> str:
    step_modes = stats.get("step_modes")
    if not isinstance(step_modes, list) or not step_modes:
        return ""
    sparsity = stats.get("sparsity_map")
    modes = list(dict.fromkeys(step_modes))
    image = Image.fromarray(np.array([[modes.index(mode)] for mode in step_modes], dtype=np.uint8), mode="P")
    colours = [bytes.fromhex(MODE_COLOURS.get(mode, "#000000")[1:]) for mode in modes]
    image.putpalette(b"".join(colours))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    grid = np.nan_to_num(step_time_grid(step_modes, sparsity), nan=0.5)
    counts = sum(1 for mode in step_modes if mode != "skipped")
    parts = [
        '<div class="sparsity">',
        _image(buffer.getvalue(), "step modes", "strip"),
        # rows are steps, top first: palette_png draws row 0 at the bottom, so flip
        _image(palette_png(grid[::-1], "viridis", 0.0, 1.0), "share of each time frame recomputed per step", "steps"),
    ]
    if sparsity:
        share = np.asarray(sparsity["recomputed"], dtype=np.float32) / max(sparsity["pruned_steps"], 1)
        parts.append(_image(palette_png(share.T, "viridis", 0.0, 1.0), "recomputed share per token", "tokens"))
    keys = " ".join(
        f'<span class="key" style="background:{MODE_COLOURS.get(mode, "#000000")}"></span>{escape(mode)}'
        for mode in modes
    )
    if sparsity:
        detail = f"time x frequency: share of the {sparsity['pruned_steps']} pruned steps that recomputed each token"
    elif "pruned" in step_modes:
        detail = "which tokens the pruned steps recomputed was not recorded for this clip"
    else:
        detail = "no token pruning in this run"
    parts.append(
        f'<p class="caption">{keys}; {len(step_modes)} steps top to bottom, {counts} model calls; '
        f"step x time: share of each latent frame recomputed {_legend('viridis', 0.0, 1.0, '')}; {detail}</p></div>"
    )
    return "".join(parts)


@dataclass(frozen=True)
class Column:
    """A sortable column: a metric (``higher_is_better`` says which end is worst) or a cost."""

    key: str
    label: str
    higher_is_better: bool


@dataclass
class Listing:
    """One clip or clip pair on a page.

    Attributes:
        anchor: the element id of its card (unique on the page).
        name: shown as its title (a file stem or a label).
        values: the values of the page's columns (missing ones shown as ``-``).
        test_audio / reference_audio: the audio files (``reference_audio`` None for a single clip).
        spectrograms: ``(reference, test)`` log-mel arrays (reference None for a single clip), or None.
        sada_stats: the accelerated clip's SADA statistics (step modes, sparsity map), or None.
    """

    anchor: str
    name: str
    values: dict[str, float | None]
    test_audio: Path | None = None
    reference_audio: Path | None = None
    prompt: str | None = None
    spectrograms: tuple[np.ndarray | None, np.ndarray] | None = None
    sada_stats: dict[str, Any] | None = None
    facts: list[str] = field(default_factory=list)
    reference_label: str = "reference"
    test_label: str = "accelerated"


def _sort_value(value: float | None, higher_is_better: bool) -> tuple[int, float]:
    """Key of a value for a worst-first sort: missing and NaN values last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0.0)
    return (0, value if higher_is_better else -value)


def sort_worst_first(listings: Sequence[Listing], column: Column) -> list[Listing]:
    """``listings`` ordered worst first by ``column`` (stable; missing and NaN values last)."""
    return sorted(listings, key=lambda item: _sort_value(item.values.get(column.key), column.higher_is_better))


def _js_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _audio(path: Path | None, role: str, label: str, page_dir: Path) -> str:
    if path is None:
        return ""
    return (
        f'<div class="player"><span class="role">{escape(label)}</span>'
        f'<audio class="{role}" controls preload="none" src="{escape(relative_url(path, page_dir))}"></audio></div>'
    )


def listing_section(listing: Listing, columns: Sequence[Column], page_dir: Path) -> str:
    """The card of one clip or pair: players (with the A/B button for a pair), values, spectrograms, sparsity."""
    players = _audio(listing.reference_audio, "reference", listing.reference_label, page_dir)
    players += _audio(listing.test_audio, "test", listing.test_label, page_dir)
    if listing.reference_audio is not None and listing.test_audio is not None:
        players += '<button type="button" class="ab" title="switch at the same position">A/B: reference</button>'
    values = "".join(
        f"<span><b>{escape(column.label)}</b> {escape(format_number(listing.values.get(column.key)))}</span>"
        for column in columns
    )
    parts = [f'<section class="card" id="{escape(listing.anchor)}">', f"<h3>{escape(listing.name)}</h3>"]
    if listing.prompt:
        parts.append(f'<p class="prompt">{escape(listing.prompt)}</p>')
    parts += [f'<div class="players">{players}</div>', f'<p class="values">{values}</p>']
    parts += [f'<p class="fact">{escape(fact)}</p>' for fact in listing.facts]
    if listing.spectrograms is not None:
        parts.append(f'<div class="specs">{spectrogram_panels(*listing.spectrograms)}</div>')
    if listing.sada_stats:
        parts.append(sparsity_panels(listing.sada_stats))
    parts.append("</section>")
    return "".join(parts)


def listings_block(listings: Sequence[Listing], columns: Sequence[Column], page_dir: Path, block_id: str) -> str:
    """A sortable table of ``listings`` (each name links to its card) followed by the cards, worst first by
    the first column."""
    ordered = sort_worst_first(listings, columns[0]) if columns else list(listings)
    header = "".join(
        f'<th><button type="button" data-key="{escape(c.key)}" data-higher="{int(c.higher_is_better)}">'
        f"{escape(c.label)}</button></th>"
        for c in columns
    )
    rows = []
    for item in ordered:
        data = " ".join(f'data-v-{escape(c.key)}="{_js_number(item.values.get(c.key))}"' for c in columns)
        cells = "".join(f"<td>{escape(format_number(item.values.get(c.key)))}</td>" for c in columns)
        rows.append(
            f'<tr data-card="{escape(item.anchor)}" {data}><td><a href="#{escape(item.anchor)}">'
            f"{escape(item.name)}</a></td>{cells}</tr>"
        )
    state = f"sorted by {escape(columns[0].label)}, worst first" if columns else ""
    return (
        f'<div class="listing" id="{escape(block_id)}"><p class="sort-state">{state}</p>'
        f'<table class="sortable"><thead><tr><th>clip</th>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<div class="cards">{"".join(listing_section(item, columns, page_dir) for item in ordered)}</div></div>'
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{margin:.2em 0;word-break:break-all}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px}
th button{font:inherit;font-weight:bold;background:none;border:0;cursor:pointer}
th button.active::after{content:" \\25BC"}th button.active.best::after{content:" \\25B2"}
td a{word-break:break-all}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em;margin:.8em 0}
.prompt{font-style:italic;white-space:pre-wrap;word-break:break-word;margin:.2em 0}
.players{display:flex;flex-wrap:wrap;gap:.6em;align-items:center}.player{display:flex;align-items:center;gap:.3em}
.player.active .role{font-weight:bold;color:#c44}.role{font-size:12px;min-width:5em}
.ab{font-weight:bold;padding:.3em .8em}
.values span{margin-right:1em;font-size:12px}.fact{font-size:12px;color:#555;margin:.1em 0}
.specs{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:.4em}
figure{margin:0}img.spec{width:100%;height:110px;display:block}
figcaption,.caption{font-size:11px;color:#444}
.legend{display:inline-flex;align-items:center;gap:3px}.legend .bar{display:inline-block;width:80px;height:8px}
.sparsity{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start;margin-top:.4em}
.sparsity img{height:110px;image-rendering:pixelated}.sparsity img.strip{width:12px}
.sparsity img.steps{width:320px}.sparsity img.tokens{width:320px}
.key{display:inline-block;width:10px;height:10px;margin:0 3px 0 6px}
#js-errors{background:#fdd;color:#900;white-space:pre-wrap;padding:.5em}
svg text{font-size:11px}svg a:hover circle{stroke:#000;stroke-width:2}
"""

_JS = """
(function () {
  "use strict";
  var errors = document.getElementById("js-errors");
  window.addEventListener("error", function (event) {
    errors.hidden = false;
    errors.textContent += "Report script error: " + event.message + "\\n";
  });
  // One player at a time; the player that plays becomes its pair's active side.
  document.addEventListener("play", function (event) {
    var players = document.querySelectorAll("audio");
    for (var i = 0; i < players.length; i++) {
      if (players[i] !== event.target) { players[i].pause(); }
    }
    var card = event.target.closest(".card");
    if (card) { setActive(card, event.target.classList.contains("test") ? "test" : "reference"); }
  }, true);
  function setActive(card, role) {
    card.dataset.active = role;
    var sides = card.querySelectorAll(".player");
    for (var i = 0; i < sides.length; i++) {
      sides[i].classList.toggle("active", sides[i].querySelector("audio").classList.contains(role));
    }
    var button = card.querySelector("button.ab");
    var label = card.querySelector("audio." + role).parentNode.querySelector(".role").textContent;
    if (button) { button.textContent = "A/B: " + label; }
  }
  // A/B: continue on the other side of the pair at the same position.
  var buttons = document.querySelectorAll("button.ab");
  for (var b = 0; b < buttons.length; b++) {
    buttons[b].addEventListener("click", function (event) {
      var card = event.target.closest(".card");
      var from = card.dataset.active === "test" ? "test" : "reference";
      var to = from === "test" ? "reference" : "test";
      var source = card.querySelector("audio." + from), target = card.querySelector("audio." + to);
      var playing = !source.paused;
      source.pause();
      try { target.currentTime = source.currentTime; } catch (e) { /* not loaded yet: starts at 0 */ }
      setActive(card, to);
      if (playing) { target.play().catch(function () { /* e.g. autoplay refused: the user presses play */ }); }
    });
  }
  // Sorting: a header sorts its table and the cards below it, worst first; a second click reverses.
  function value(row, key) { return parseFloat(row.getAttribute("data-v-" + key)); }
  function sortListing(listing, button, worstFirst) {
    var key = button.dataset.key, higher = button.dataset.higher === "1";
    var body = listing.querySelector("tbody"), rows = Array.prototype.slice.call(body.rows);
    var sign = (higher ? 1 : -1) * (worstFirst ? 1 : -1);
    rows.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
      return x === y ? 0 : (x < y ? -sign : sign);
    });
    var cards = listing.querySelector(".cards");
    rows.forEach(function (row) {
      body.appendChild(row);
      cards.appendChild(document.getElementById(row.dataset.card));
    });
    var all = listing.querySelectorAll("th button");
    for (var i = 0; i < all.length; i++) { all[i].classList.remove("active", "best"); }
    button.classList.add("active");
    button.classList.toggle("best", !worstFirst);
    button.dataset.worstFirst = worstFirst ? "1" : "0";
    listing.querySelector(".sort-state").textContent =
      "sorted by " + button.textContent + ", " + (worstFirst ? "worst" : "best") + " first";
  }
  var listings = document.querySelectorAll(".listing");
  for (var l = 0; l < listings.length; l++) {
    (function (listing) {
      var heads = listing.querySelectorAll("th button");
      for (var h = 0; h < heads.length; h++) {
        heads[h].addEventListener("click", function (event) {
          var button = event.target, again = button.classList.contains("active");
          sortListing(listing, button, again ? button.dataset.worstFirst !== "1" : true);
        });
      }
      if (heads.length) {
        heads[0].classList.add("active");
        heads[0].dataset.worstFirst = "1";
      }
    })(listings[l]);
  }
  // A link can ask for an order: report.html#sort=KEY (worst first) or #sort=KEY:best.
  var wanted = /^#sort=([^:]+)(:best)?$/.exec(window.location.hash);
  if (wanted) {
    for (var w = 0; w < listings.length; w++) {
      var heads = listings[w].querySelectorAll("th button");
      for (var k = 0; k < heads.length; k++) {
        if (heads[k].dataset.key === decodeURIComponent(wanted[1])) {
          sortListing(listings[w], heads[k], !wanted[2]);
        }
      }
    }
  }
  // Markers for tests and for measuring: the script ran to its end; milliseconds to the load event.
  document.documentElement.dataset.ready = "1";
  window.addEventListener("load", function () {
    document.documentElement.dataset.loadMs = String(Math.round(performance.now()));
  });
})();
"""


def page(title: str, body: str) -> str:
    """A complete HTML document: ``title`` (escaped here) and ``body`` (HTML already escaped by its builder)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR_META}'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network: images inline, audio from the page's folder, scripts and styles inline only.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "media-src 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        '<div id="js-errors" hidden></div>'
        f"<h1>{escape(title)}</h1>{body}<script>{_JS}</script></body></html>\n"
    )


# -- the three pages ---------------------------------------------------------------------------------------


def _metric_columns(metrics: Sequence[str], first: str | None) -> list[Column]:
    ordered = ([first] if first in metrics else []) + [m for m in metrics if m != first]
    return [
        Column(m, m + (f" ({METRICS[m].unit})" if METRICS[m].unit else ""), METRICS[m].higher_is_better)
        for m in ordered
        if m in METRICS
    ]


#: Cost columns: a larger wall time or NFE of the accelerated clip is worse.
COST_COLUMNS = (Column("test_wall_time_s", "wall time (s)", False), Column("test_nfe", "NFE", False))


def _cost_values(cost: dict[str, Any] | None) -> dict[str, float | None]:
    test = (cost or {}).get("test") or {}
    return {"test_wall_time_s": test.get("wall_time_s"), "test_nfe": test.get("nfe")}


def _cost_fact(cost: dict[str, Any] | None) -> list[str]:
    reference, test = (cost or {}).get("reference"), (cost or {}).get("test")
    if not reference or not test:
        return []
    speedup = reference["wall_time_s"] / test["wall_time_s"] if test["wall_time_s"] else float("nan")
    return [
        f"reference {reference['wall_time_s']:.3g} s, {reference['nfe']} NFE; accelerated {test['wall_time_s']:.3g} s, "
        f"{test['nfe']} NFE (speedup {speedup:.2f}x)"
    ]


def evaluation_page(evaluation: Evaluation, page_dir: Path) -> str:
    """The ``report.html`` of an :class:`~.evaluate.Evaluation` written into ``page_dir``."""
    report = evaluation.report
    columns = _metric_columns(list(report["summary"]), key_metric(report["summary"])) + list(COST_COLUMNS)
    listings = []
    for index, pair in enumerate(report["pairs"]):
        listings.append(
            Listing(
                anchor=f"pair-{index}",
                name=pair["name"],
                values={**pair["metrics"], **_cost_values(pair.get("cost"))},
                test_audio=Path(pair["test"]),
                reference_audio=Path(pair["reference"]),
                prompt=pair.get("prompt"),
                spectrograms=evaluation.thumbnails.get(pair["name"]),
                sada_stats=evaluation.test_stats.get(pair["name"]),
                facts=_cost_fact(pair.get("cost")) + list(pair["notes"]),
            )
        )
    speed = report["speed"]
    summary = [
        f"<p>Reference clips: <code>{escape(report['reference_dir'])}</code>; accelerated clips: "
        f"<code>{escape(report['test_dir'])}</code>; {report['pairs_evaluated']} pairs, "
        f"{len(report['problems'])} problems.</p>"
    ]
    if speed is not None and speed.get("speedup") is not None:
        summary.append(
            f"<p>Speed over {speed['clips']} pairs: speedup {speed['speedup']:.2f}x in wall time, NFE "
            f"{speed['test_nfe']} / {speed['reference_nfe']}.</p>"
        )
    if report["summary"]:
        rows = "".join(
            f"<tr><td>{escape(m)}</td><td>{format_number(s['mean'])}</td><td>{format_number(s['median'])}</td>"
            f"<td>{format_number(s['worst'])}</td><td>{escape(s['worst_clip'])}</td></tr>"
            for m, s in report["summary"].items()
        )
        summary.append(
            "<table><thead><tr><th>metric</th><th>mean</th><th>median</th><th>worst</th><th>worst clip</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )
    summary.append(f'<p class="caption">Spectrograms: {escape(report["conventions"]["spectrogram"])}.</p>')
    if report["problems"]:
        items = "".join(f"<li>{escape(p['file'])}: {escape(p['reason'])}</li>" for p in report["problems"])
        summary.append(f"<h2>Problems</h2><ul>{items}</ul>")
    body = "".join(summary) + "<h2>Pairs, worst first</h2>" + listings_block(listings, columns, page_dir, "pairs")
    return page("sada-audio evaluation", body)


def write_evaluation_html(evaluation: Evaluation, output_dir: Path) -> Path:
    """Write ``output_dir/report.html`` for an evaluation, atomically (a symlink there is replaced, never written
    through); return its path."""
    return write_text(output_dir / HTML_NAME, evaluation_page(evaluation, output_dir))


#: The render folder's page (beside ``index.jsonl``).
RENDER_INDEX_NAME = INDEX_PAGE_NAME
RENDER_COLUMNS = (
    Column("speedup_estimate", "speedup (est., vs 50 steps)", True),
    Column("nfe_speedup", "speedup (NFE)", True),
    Column("clip_time_s", "wall time per clip (s)", False),
    Column("nfe", "NFE", False),
    Column("pruned_fraction", "pruned token share", True),
)


def audio_thumbnail(path: Path) -> np.ndarray | None:
    """The log-mel thumbnail of an audio file (channels averaged), None if it cannot be read."""
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        return pool_frames(log_mel_spectrogram(data.mean(axis=1), rate)).astype(np.float16)
    except Exception as error:  # libsndfile and librosa report with their own exception types
        logger.warning("no spectrogram of %s in the index page: %s", path, error)
        return None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when it is missing, unreadable or not an object (pages never fail on
    a sidecar)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render_index_page(out_dir: Path) -> str:
    """The ``index.html`` of a render folder, from its ``index.jsonl`` and the clips' sidecars."""
    listings, problems = [], []
    for number, entry in enumerate(read_index_lines(out_dir / INDEX_NAME)):
        files = entry.get("files") or []
        if entry.get("status") not in ("rendered", "skipped") or not files:
            problems.append(f"{entry.get('name')} ({entry.get('status')}): {entry.get('error') or 'no audio'}")
            continue
        audio = out_dir / str(files[0])
        sidecar = read_json_object(audio.with_suffix(".json"))
        mel = audio_thumbnail(audio)
        listings.append(
            Listing(
                anchor=f"clip-{number}",
                name=str(entry.get("name")),
                values={column.key: entry.get(column.key) for column in RENDER_COLUMNS},
                test_audio=audio,
                prompt=entry.get("prompt"),
                spectrograms=None if mel is None else (None, mel),
                sada_stats=sidecar.get("sada_stats"),
                facts=[f"seed {entry.get('seed')}, {entry.get('steps')} steps, status {entry.get('status')}"],
                test_label="clip",
            )
        )
    body = f"<p>{len(listings)} clips in <code>{escape(out_dir.name)}</code>, lowest speedup first.</p>"
    if problems:
        body += "<h2>Not rendered</h2><ul>" + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul>"
    body += "<h2>Clips</h2>" + listings_block(listings, RENDER_COLUMNS, out_dir, "clips")
    return page("sada-audio render", body)


def write_render_index(out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` for a render folder (replaced at every run, like ``index.jsonl``)."""
    return write_text(out_dir / RENDER_INDEX_NAME, render_index_page(out_dir))
