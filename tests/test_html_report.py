"""The HTML listening reports and the sparsity map: the page builder (escaping, relative audio paths, worst-first
sorting, compact images), the engine's recompute counters, ``generate --sparsity-map``, ``evaluate``'s
report.html, and a real headless Chromium loading a report of a tiny run (skipped, with the reason, where
Chromium is not installed; ``.ci/run`` installs it)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from PIL import Image

from sada_audio.cli.main import main as cli
from sada_audio.config import SADAConfig
from sada_audio.evaluation import embeddings
from sada_audio.evaluation.benchmark import summarise
from sada_audio.evaluation.benchmark_html import benchmark_page, method_anchor, representative_run, speed_fidelity_svg
from sada_audio.evaluation.evaluate import evaluate_directories
from sada_audio.evaluation.html_report import (
    LEVELS,
    Column,
    Listing,
    listings_block,
    page,
    palette_png,
    relative_url,
    sort_worst_first,
    sparsity_panels,
    write_render_index,
)
from sada_audio.evaluation.report import write_outputs
from sada_audio.generation import ClipRequest, SamplingSettings, clip_metadata, generate_batch
from sada_audio.method.sparsity_map import PROFILE_ROWS, SparsityMap

SR = 16_000
#: LPIPS off without a network call (its absence is reported in the page like any unavailable metric).
_NO_LPIPS = "/nonexistent/alexnet.pth"
EVIL = "<script>alert(1)</script> \"quoted\" 'single' ../../etc/passwd & more"


@pytest.fixture(autouse=True)
def _no_default_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test depends on whether the embedded CLAP model is installed."""
    monkeypatch.setattr(embeddings, "default_embedding_source", lambda: tmp_path / "not-installed")


class _Collector(HTMLParser):
    """The page's elements as (tag, attributes) and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    return collector


def _tone(frequency: float, seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    return (level * np.sin(2 * np.pi * frequency * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


# ---------------------------------------------------------------- the page builder


def test_untrusted_strings_show_as_text_and_never_as_markup(tmp_path: Path) -> None:
    audio = tmp_path / "clips" / "a#b c?'d\".wav"
    listing = Listing("pair-0", EVIL, {"m": 1.0}, test_audio=audio, reference_audio=audio, prompt=EVIL, facts=[EVIL])
    text = page(EVIL, listings_block([listing], [Column("m", EVIL, False)], tmp_path, "pairs"))
    parsed = _parse(text)
    # the only script element is the report's own, and no attribute was broken open by a quote
    assert [tag for tag, _ in parsed.elements].count("script") == 1
    assert "alert(1)" not in text.split("<script>", 1)[1].split("</script>")[0]
    assert all(not name.startswith("on") for _, attrs in parsed.elements for name in attrs)
    # ... while the text reads exactly as given, everywhere it is shown
    assert "".join(parsed.text).count(EVIL) >= 4
    sources = [attrs["src"] for tag, attrs in parsed.elements if tag == "audio"]
    assert sources == ["clips/a%23b%20c%3F%27d%22.wav"] * 2


def test_relative_url_resolves_to_the_file_from_the_page(tmp_path: Path) -> None:
    page_dir, audio = tmp_path / "report", tmp_path / "runs" / "100% sure #1" / "clip.flac"
    url = relative_url(audio, page_dir)
    assert url == "../runs/100%25%20sure%20%231/clip.flac"
    assert (page_dir / unquote(url)).resolve() == audio.resolve()
    assert relative_url(page_dir / "x.wav", page_dir) == "x.wav"


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_sorting_puts_the_worst_first_and_missing_values_last(higher_is_better: bool) -> None:
    values = {"a": 1.0, "b": float("nan"), "c": 3.0, "d": None, "e": 2.0, "f": float("inf")}
    listings = [Listing(name, name, {"m": value}) for name, value in values.items()]
    ordered = [item.name for item in sort_worst_first(listings, Column("m", "m", higher_is_better))]
    assert ordered == (["a", "e", "c", "f", "b", "d"] if higher_is_better else ["f", "c", "e", "a", "b", "d"])


def test_table_rows_and_cards_come_in_the_same_worst_first_order(tmp_path: Path) -> None:
    listings = [Listing(f"pair-{i}", f"clip {i}", {"psnr": value}) for i, value in enumerate([30.0, 10.0, 20.0])]
    text = listings_block(listings, [Column("psnr", "PSNR", True)], tmp_path, "pairs")
    rows = re.findall(r'<tr data-card="(pair-\d)" data-v-psnr="([^"]+)"', text)
    cards = re.findall(r'<section class="card" id="(pair-\d)"', text)
    assert rows == [("pair-1", "10.0"), ("pair-2", "20.0"), ("pair-0", "30.0")]
    assert cards == ["pair-1", "pair-2", "pair-0"]
    assert "sorted by PSNR, worst first" in text


def test_spectrogram_images_are_small_indexed_pngs() -> None:
    values = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    png = palette_png(values, "magma", float(values.min()), float(values.max()))
    image = Image.open(io.BytesIO(png))
    assert (image.mode, image.size) == ("P", (256, 64))
    assert len(np.unique(np.asarray(image))) <= LEVELS
    # row 0 (the lowest mel bin) is drawn at the bottom
    ramp = np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, axis=1)
    shown = np.asarray(Image.open(io.BytesIO(palette_png(ramp, "magma", 0.0, 3.0))))
    assert shown[-1, 0] == 0 and shown[0, 0] == LEVELS - 1


def test_sparsity_panels_show_modes_and_tokens_only_where_known() -> None:
    modes = ["full", "pruned", "skipped", "shallow"]
    without = sparsity_panels({"step_modes": ["full", "skipped", "shallow"], "sparsity_map": None})
    assert "no token pruning in this run" in without and 'class="tokens"' not in without
    assert "shallow" in without  # a mode the engine may add later is listed, not dropped
    unrecorded = sparsity_panels({"step_modes": modes})
    assert "was not recorded" in unrecorded and 'class="tokens"' not in unrecorded
    counts = [[1, 0], [0, 1], [1, 1]]
    sparsity = {"grid": [3, 2], "pruned_steps": 1, "recomputed": counts, "step_profiles": {"1": [50, 50, 100]}}
    with_tokens = sparsity_panels({"step_modes": modes, "sparsity_map": sparsity})
    assert 'class="tokens"' in with_tokens and "1 pruned steps" in with_tokens
    assert sparsity_panels({"step_modes": []}) == ""
    broken = {"step_modes": modes, "sparsity_map": {"pruned_steps": 1, "recomputed": "x", "step_profiles": {"1": 5}}}
    assert "not readable" in sparsity_panels(broken)


# ---------------------------------------------------------------- the engine's counters


def test_sparsity_map_counts_the_finest_selection_of_every_step() -> None:
    sparsity = SparsityMap()
    assert sparsity.to_dict() is None
    # step 3: level 1 (2 x 2 grid over a 3 x 4 latent) keeps token 0, then level 0 keeps two latent tokens
    sparsity.record(3, 1, (2, 2), (3, 4), torch.tensor([0]))
    sparsity.record(3, 0, (3, 4), (3, 4), torch.tensor([0, 11]))
    sparsity.record(3, 1, (2, 2), (3, 4), torch.tensor([0, 1, 2, 3]))  # coarser than what step 3 has: ignored
    assert sparsity.to_dict()["pruned_steps"] == 1  # reading mid-run counts the current step once
    # step 5: only level 1, token 3 (rows 2..3, columns 2..3 of the latent, cut at row 3)
    sparsity.record(5, 1, (2, 2), (3, 4), torch.tensor([3]))
    assert sparsity.to_dict() == sparsity.to_dict()
    data = sparsity.to_dict()
    assert data is not None and json.loads(json.dumps(data)) == data
    assert data["grid"] == [3, 4] and data["pruned_steps"] == 2
    assert data["recomputed"] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 2]]
    assert data["step_profiles"] == {"3": [25, 0, 25], "5": [0, 0, 50]}


def test_sparsity_profiles_are_pooled_to_a_bounded_length() -> None:
    sparsity = SparsityMap()
    rows = 2 * PROFILE_ROWS
    sparsity.record(0, 0, (rows, 2), (rows, 2), torch.arange(0, 2 * rows, 2))  # column 0 of every row
    (profile,) = sparsity.to_dict()["step_profiles"].values()
    assert profile == [50] * PROFILE_ROWS


def _tokenwise_config() -> SADAConfig:
    # a cap below the short test clip's 512 latent tokens, so that pruned steps really reuse some of them;
    # without step skipping, since the preset's accelerated steps are otherwise all skips or Lagrange anchors
    return SADAConfig.preset("musicldm").replace(tokenwise=True, stepwise=False, max_fix=64)


def test_engine_records_a_sparsity_map_for_pruned_steps(tiny_musicldm) -> None:
    settings = SamplingSettings(steps=20, duration=1.28)
    batch = generate_batch(tiny_musicldm, [ClipRequest("piano", 0)], settings, sada_config=_tokenwise_config())
    stats = batch.sada_stats
    sparsity = stats["sparsity_map"]
    pruned = [step for step, mode in enumerate(stats["step_modes"]) if mode == "pruned"]
    assert pruned and sorted(map(int, sparsity["step_profiles"])) == pruned
    counts = np.array(sparsity["recomputed"])
    assert counts.shape == tuple(sparsity["grid"]) and counts.max() <= len(pruned)
    # pruning means some tokens were reused: fewer recomputations than tokens x pruned steps
    assert 0 < counts.sum() < counts.size * len(pruned)
    without = generate_batch(tiny_musicldm, [ClipRequest("piano", 0)], settings)
    assert without.sada_stats["sparsity_map"] is None  # the preset does not prune tokens


def test_generate_writes_the_sparsity_map_png(tmp_path: Path, tiny_musicldm_dir: Path) -> None:
    out, figure = tmp_path / "clip.wav", tmp_path / "map.png"
    args = ["generate", EVIL, "-o", str(out), "-m", str(tiny_musicldm_dir), "--steps", "12", "--duration", "1.28"]
    result = CliRunner().invoke(cli, [*args, "--sparsity-map", str(figure)])
    assert result.exit_code == 0, result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(figure) in result.output
    again = CliRunner().invoke(cli, [*args, "--sparsity-map", str(figure), "--overwrite", "--accelerate", "none"])
    assert again.exit_code == 2 and "needs --accelerate sada" in again.output
    assert "Traceback" not in again.output


# ---------------------------------------------------------------- evaluate's report.html


def _tone_pairs(root: Path, count: int) -> tuple[Path, Path]:
    reference, test = root / "ref dir", root / "test#dir"
    reference.mkdir()
    test.mkdir()
    for index in range(count):
        name = f"{index:02d}_tone'\"<b>"
        sidecar = {"prompt": f"{EVIL} {index}", "steps": 20, "wall_time_s": 2.0}
        sf.write(reference / f"{name}.wav", _tone(220 + 40 * index), SR)
        sf.write(test / f"{name}.wav", _tone(220 + 40 * index) + 0.01 * index * _tone(3000), SR)
        (reference / f"{name}.json").write_text(json.dumps(sidecar))
        stats = {"model_calls": 12, "step_modes": ["full"] * 10 + ["skipped"] * 8 + ["full"] * 2}
        (test / f"{name}.json").write_text(json.dumps({**sidecar, "wall_time_s": 1.0, "sada_stats": stats}))
    return reference, test


@pytest.mark.integration  # end to end through the command line
def test_evaluate_writes_a_listening_report(tmp_path: Path) -> None:
    reference, test = _tone_pairs(tmp_path, 3)
    output = tmp_path / "eval"
    args = ["evaluate", str(reference), str(test), "-o", str(output), "--lpips-backbone", _NO_LPIPS]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = (output / "report.html").read_text(encoding="utf-8")
    parsed = _parse(text)
    sources = [attrs["src"] for tag, attrs in parsed.elements if tag == "audio"]
    assert len(sources) == 6 and all((output / unquote(src)).is_file() for src in sources)
    assert all(attrs.get("preload") == "none" for tag, attrs in parsed.elements if tag == "audio")
    # the pair with the largest log-mel L1 (the most added noise) comes first
    cards = re.findall(r'<section class="card" id="pair-(\d)"', text)
    assert cards == ["2", "1", "0"]
    assert [tag for tag, _ in parsed.elements].count("script") == 1 and f"{EVIL} 0" in "".join(parsed.text)
    images = [attrs["src"] for tag, attrs in parsed.elements if tag == "img"]
    assert len(images) == 3 * 3 + 3 * 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "speedup 2.00x" in text
    # an earlier report is kept unless --overwrite
    (output / "report.md").unlink()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "report.html" in again.output and "--overwrite" in again.output
    assert CliRunner().invoke(cli, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.integration  # end to end through the command line
def test_report_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    reference, test = _tone_pairs(tmp_path, 2)
    output, victim = tmp_path / "eval", tmp_path / "victim.txt"
    output.mkdir()
    victim.write_text("keep me")
    (output / "report.html").symlink_to(victim)
    write_outputs(evaluate_directories(reference, test, lpips_backbone=_NO_LPIPS), output)
    assert victim.read_text() == "keep me"
    assert not (output / "report.html").is_symlink() and "<!DOCTYPE html>" in (output / "report.html").read_text()


def test_render_index_lists_clips_lowest_speedup_first_and_the_rows_that_failed(tmp_path: Path) -> None:
    out = tmp_path / "render"
    out.mkdir()
    entries = []
    for name, speedup in (("fast one", 2.5), ("slow#one", 1.2)):
        sf.write(out / f"{name}.wav", _tone(440), SR)
        stats = {"step_modes": ["full", "skipped"], "sparsity_map": None}
        (out / f"{name}.json").write_text(json.dumps({"sada_stats": stats}))
        entry = {"name": name, "line": len(entries) + 1, "status": "rendered", "prompt": EVIL, "seed": 1}
        entries.append(
            {**entry, "steps": 2, "files": [f"{name}.wav"], "nfe": 1, "nfe_speedup": 2.0, "speedup_estimate": speedup}
        )
    entries.append({"name": "broken", "line": 3, "status": "failed", "files": [], "error": f"ValueError: {EVIL}"})
    (out / "index.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries) + '{"trunc')
    path = write_render_index(out)
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert path == out / "index.html" and [tag for tag, _ in parsed.elements].count("script") == 1
    sources = [attrs["src"] for tag, attrs in parsed.elements if tag == "audio"]
    assert sources == ["slow%23one.wav", "fast%20one.wav"]
    assert f"broken (failed): ValueError: {EVIL}" in "".join(parsed.text)
    assert sum(tag == "img" for tag, _ in parsed.elements) == 2 * 3  # spectrogram, step modes, step x time


# ---------------------------------------------------------------- benchmark page parts


def test_benchmark_plot_links_every_method_and_draws_the_front() -> None:
    entries = [
        {"scheduler": "ddim", "label": "SADA (preset)", "method": "SADA", "setting": "preset", "speedup": 1.8,
         "fidelity": {"mel_psnr": 30.0}, "on_pareto_front": True},
        {"scheduler": "ddim", "label": EVIL, "method": "Evil", "setting": EVIL, "speedup": 1.5,
         "fidelity": {"mel_psnr": 25.0}, "on_pareto_front": False},
        {"scheduler": "ddim", "label": "Same", "method": "Same", "setting": "", "speedup": 1.0,
         "fidelity": {"mel_psnr": float("inf")}, "on_pareto_front": True},
    ]  # fmt: skip
    svg = speed_fidelity_svg(entries, "ddim")
    parsed = _parse(svg)
    links = [attrs["href"] for tag, attrs in parsed.elements if tag == "a"]
    assert links == [f"#{method_anchor('ddim', 'SADA (preset)')}", f"#{method_anchor('ddim', EVIL)}"]
    assert all(re.fullmatch(r"#[A-Za-z0-9-]+", link) for link in links)
    assert "script" not in [tag for tag, _ in parsed.elements] and EVIL in "".join(parsed.text)
    assert "Not plotted (infinite value): Same" in svg and "<polyline" in svg


def _benchmark_results(audio: dict[str, Path] | None) -> dict:
    """A benchmark's results for one sampler, one prompt: the baseline and one method (labelled ``EVIL``)."""
    common = {"scheduler": "ddim", "prompt": EVIL, "seed": 0}
    runs = [
        {**common, "method": "baseline", "setting": "", "label": "baseline", "wall_s": 2.0, "speedup": 1.0,
         "step_kinds": ["full"] * 4},
        {**common, "method": "SADA", "setting": EVIL, "label": EVIL, "wall_s": 1.0, "speedup": 2.0, "nfe": 2,
         "step_kinds": ["full", "skipped", "skipped", "full"],
         "metrics": {"mel_psnr": 30.0, "mel_ssim": 0.9, "log_mel_l1": 0.1, "mr_stft": 0.5, "si_sdr": 3.0}},
    ]  # fmt: skip
    for run in runs if audio else []:
        run["audio"] = str(audio[run["method"]])
    summary = summarise(runs)
    environment = {"date": "2026-11-30", "cpu": "test cpu", "device": "cpu"}
    return {"settings": {"steps": 4}, "environment": environment, "quality": {"runs": runs, "summary": summary}}


@pytest.mark.parametrize("keep_clips", [True, False])
def test_benchmark_page_pairs_each_method_with_its_baseline(tmp_path: Path, keep_clips: bool) -> None:
    audio = None
    if keep_clips:
        audio = {"baseline": tmp_path / "clips" / "base.flac", "SADA": tmp_path / "clips" / "sada#1.flac"}
        audio["baseline"].parent.mkdir()
        for index, path in enumerate(audio.values()):
            sf.write(path, _tone(300 + 100 * index), SR)
    page_dir = tmp_path / "bench"
    text = benchmark_page(_benchmark_results(audio), page_dir, f"sada-audio benchmark --prompts '{EVIL}'")
    parsed = _parse(text)
    assert [tag for tag, _ in parsed.elements].count("script") == 1 and EVIL in "".join(parsed.text)
    sources = [attrs["src"] for tag, attrs in parsed.elements if tag == "audio"]
    links = {attrs["href"] for tag, attrs in parsed.elements if tag == "a"}
    assert f"#{method_anchor('ddim', EVIL)}" in links  # from the plot and the table
    if keep_clips:
        assert sources == ["../clips/base.flac", "../clips/sada%231.flac"]  # baseline, then the method
        assert "../clips/sada%231.flac" in links  # the method's clip list
        assert sum(tag == "img" for tag, _ in parsed.elements) == 3 + 2  # spectrograms, step modes
    else:
        assert sources == [] and "were not kept" in text


def test_representative_run_is_the_median_by_log_mel_psnr() -> None:
    runs = [{"metrics": {"mel_psnr": value}, "id": value} for value in (30.0, 10.0, 20.0, 40.0)]
    assert representative_run(runs)["id"] == 20.0
    assert representative_run([{"id": "baseline"}]) is None


# ---------------------------------------------------------------- a real browser


def _chromium() -> str:
    executable = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it where it can)")
    return executable


def _headless(executable: str, profile: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([executable, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _tiny_run(pipe, root: Path, prompts: list[str]) -> tuple[Path, Path]:
    """Reference and SADA (with token pruning, for a sparsity map) clips of the tiny MusicLDM."""
    settings = SamplingSettings(steps=20, duration=1.28)
    folders = root / "reference", root / "test"
    for folder, accelerate in zip(folders, (False, True), strict=True):
        folder.mkdir()
        for index, prompt in enumerate(prompts):
            clip = ClipRequest(prompt, index)
            batch = generate_batch(pipe, [clip], settings, accelerate=accelerate, sada_config=_tokenwise_config())
            name = f"{index:02d}_{'../' if index else ''}clip".replace("/", "-")
            sf.write(folder / f"{name}.wav", batch.waveforms[0, 0], batch.sample_rate)
            (folder / f"{name}.json").write_text(json.dumps(clip_metadata(clip, settings, batch, [f"{name}.wav"])))
    return folders


@pytest.mark.integration
def test_report_of_a_tiny_run_loads_in_headless_chromium(
    tiny_musicldm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    executable = _chromium()
    reference, test = _tiny_run(tiny_musicldm, tmp_path, ["slow piano", EVIL])
    output = tmp_path / "report"
    output.mkdir()
    write_outputs(evaluate_directories(reference, test, lpips_backbone=_NO_LPIPS), output)
    report = output / "report.html"
    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        dump = _headless(executable, profile, "--dump-dom", report.as_uri())
        shot = _headless(executable, profile, "--window-size=1280,1800", f"--screenshot={screenshot}", report.as_uri())
    assert dump.returncode == 0 and shot.returncode == 0, dump.stderr[-2000:] + shot.stderr[-2000:]
    console = [line for line in dump.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no script error, no blocked fetch (the page's CSP allows no network)
    root = re.search(r"<html[^>]*>", dump.stdout).group(0)
    assert 'data-ready="1"' in root  # the report's script ran to its end
    parsed = _parse(dump.stdout)
    assert 'id="js-errors" hidden' in dump.stdout
    sources = [attrs["src"] for tag, attrs in parsed.elements if tag == "audio"]
    assert len(sources) == 4 and all((output / unquote(src)).is_file() for src in sources)
    assert [tag for tag, _ in parsed.elements].count("script") == 1 and EVIL in "".join(parsed.text)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    load = re.search(r'data-load-ms="(\d+)"', root)
    # the page's own sorting, asked for by the link: best log-mel L1 first reverses the default order
    worst_first = re.findall(r'<section class="card" id="(pair-\d)"', dump.stdout)
    with tempfile.TemporaryDirectory() as profile:
        resorted = _headless(executable, profile, "--dump-dom", report.as_uri() + "#sort=log_mel_l1:best")
    assert re.findall(r'<section class="card" id="(pair-\d)"', resorted.stdout) == worst_first[::-1]
    assert "sorted by log_mel_l1, best first" in resorted.stdout
    timing = "" if load is None else f" (load event at {load.group(1)} ms)"
    with capsys.disabled():
        print(f"\nheadless Chromium: {report} loaded without console errors{timing}; screenshot: {screenshot}")
