"""Issue 16, in front of a class and on a phone: in a real browser (Debian's chromium,
Playwright) against the app launched in-process on the tiny open_clip ViT, the presenter view
(the map's box, the strip and the predictions in the first viewport of a 1280x720 and a
1920x1080 screen, the tokens chart's text at least 12 px), ▶ play / pause through the blocks,
the phone flow at 390 px, Stop following shown only while following; and, without a browser,
the race where a strip tile's answer still in flight would bring back a patch the visitor
stopped following.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app as app_module
from tca import charts
from tca.app import export, page
from tca.app.shown import PAUSE_LABEL, PLAY_LABEL, OnScreen, play_start, play_step

ROOT = Path(__file__).resolve().parent.parent
BROWSER = os.environ.get("TCA_BROWSER", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
TIMEOUT = 60_000
TINY = "tca-tiny-ViT"


# ------------------------------------------------------------------------- without a browser


def test_play_steps_and_stops_on_the_last_block():
    assert [play_step(l, 12) for l in (0, 5, 10)] == [(1, True), (6, True), (11, False)]
    assert play_step(11, 12) == (11, False)  # already at the end: stays, stops
    assert (play_start(11, 12), play_start(4, 12), play_start(-3, 12)) == (0, 4, 0)


def test_on_screen_is_copied_per_session_with_its_own_lock():
    a = OnScreen(3, 7)
    b = copy.deepcopy(a)
    assert (b.layer, b.patch, b.version) == (3, 7, 0) and b.lock is not a.lock
    b.follow(7)
    assert b.version == 0  # the same patch is no change
    b.follow(None)
    assert (b.patch, b.version) == (None, 1)


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    app = app_module.App(TINY, "none", exports=export.ExportDir(tmp_path_factory.mktemp("ex")))
    app_module.build_demo(TINY, "none", app=app)
    return app


def _named(app, out: dict) -> dict:
    names = {id(c): n for n, c in app.ui.items()}
    return {names[id(c)]: v for c, v in out.items()}


def _merged_click(run) -> tuple[int, gr.SelectData]:
    lv = run.trace.fate[0, run.trace.depth - 1].numpy().ravel()
    patch = int(np.flatnonzero(lv == 1)[0])
    r, c = divmod(patch, run.trace.grid[1])
    px = page.MAP_ZOOM * run.seen.shape[0] // run.trace.grid[0]
    return patch, gr.SelectData(None, {"index": [c * px + 3, r * px + 3], "value": None})


def test_a_strip_answer_overtaken_by_stop_following_shows_no_patch(tiny_app):
    """The visitor follows a patch, clicks a strip tile (its event carries the followed patch)
    and presses Stop following; the tile's event is handled after Stop following. Its answer
    draws from the session's OnScreen, so neither the map nor the table shows the patch, and
    Stop following itself drew the block last shown."""
    run = tiny_app.first_screen()
    on = OnScreen()
    patch, click = _merged_click(run)
    followed = _named(tiny_app, tiny_app.pick_patch(run, 11, "fates", False, 0.5, click, on))
    assert followed["patch"] == patch and followed["stop_follow"]["visible"] is True
    assert (on.layer, on.patch, on.version) == (11, patch, 1)
    stopped = _named(tiny_app, tiny_app.clear_patch(run, 11, "fates", False, 0.5, on))
    assert stopped["patch"] is None and stopped["stop_follow"]["visible"] is False
    assert (on.patch, on.version) == (None, 2)
    # the tile's event still carries patch=... as it was when the visitor clicked the tile
    tile = gr.SelectData(None, {"index": 5, "value": None})
    late = _named(tiny_app, tiny_app.pick_layer(run, "fates", False, 0.5, patch, tile, on))
    assert "Click a patch" in late["follow"]["value"]
    assert np.array_equal(late["map"]["value"], page.map_image(run, page.Display(5)))
    # without the session's state (the old behaviour) the same answer brought the patch back
    old = _named(tiny_app, tiny_app.pick_layer(run, "fates", False, 0.5, patch, tile))
    assert "Following patch" in old["follow"]["value"]
    # and Stop following, sent while the slider still said 11, draws block 5 (the last shown)
    on.follow(patch)
    again = _named(tiny_app, tiny_app.clear_patch(run, 11, "fates", False, 0.5, on))
    assert np.array_equal(again["map"]["value"], page.map_image(run, page.Display(5)))


def test_play_handlers_step_from_the_last_shown_block(tiny_app):
    run = tiny_app.first_screen()
    on = OnScreen()
    started = _named(
        tiny_app, tiny_app.toggle_play(run, PLAY_LABEL, 11, "fates", False, 0.5, None, on)
    )
    assert started["play_timer"]["active"] is True and started["play"]["value"] == PAUSE_LABEL
    assert started["layer"]["value"] == 0 and started["strip"]["selected_index"] == 0
    tick = _named(tiny_app, tiny_app.play_tick(run, 0, "fates", False, 0.5, None, on))
    assert tick["layer"]["value"] == 1 and tick["strip"]["selected_index"] == 1
    assert "After block 1" in tick["info"]["value"] and "play_timer" not in tick
    assert np.array_equal(tick["chart"]["value"], page.chart_image(run, 1))
    on.layer = 10
    last = _named(tiny_app, tiny_app.play_tick(run, 1, "fates", False, 0.5, None, on))
    assert last["layer"]["value"] == 11 and last["play_timer"]["active"] is False
    assert last["play"]["value"] == PLAY_LABEL
    paused = _named(
        tiny_app, tiny_app.toggle_play(run, PAUSE_LABEL, 4, "fates", False, 0.5, None, on)
    )
    assert set(paused) == {"play_timer", "play"} and paused["play_timer"]["active"] is False


def test_the_start_up_example_shows_no_wall_clock(tiny_app):
    first = tiny_app.first_parts()
    assert "<td>\u2014</td><td>\u2014</td>" in first["cost"]["value"]
    assert "start-up example" in first["cost"]["value"]
    run = tiny_app.first_screen()
    own = page.parts(run, page.Display(11), ("cost",))["cost"]["value"]
    t = run.result.timings_ms
    assert f"<td>{t['baseline_ms']:.0f}</td><td>{t['condensed_ms']:.0f}</td>" in own
    assert "start-up example" not in own
    # the centre crop is said, with the photo's size (chelsea.jpg is 451 x 300)
    legend = first["legend"]["value"]
    assert "the centre square of the 451\u00d7300 photo (its sides cut off)" in legend


def test_the_gif_has_a_title_and_a_legend(tiny_app):
    run = tiny_app.first_screen()
    frames = page.depth_frames(run, page.Display(11))
    assert len(frames) == 12
    assert page.gif_title(run) == "chelsea.jpg \u00b7 tca-tiny-ViT \u00b7 TCA R=0.7"
    # the title band and the legend band make the frame taller than the captioned map alone
    bare = page.compose.grid([[np.zeros((448, 448, 3), np.uint8)]], [["x"]], font_size=16)
    assert frames[0].height > bare.height + 16 * 2


# --------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def url():
    pytest.importorskip("playwright.sync_api")
    demo = app_module.build_demo(TINY, "none")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    try:
        yield local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(BROWSER).exists():
        pytest.skip(f"no browser at {BROWSER} (scripts/test.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=ARGS)
        yield b
        b.close()


def _expect():
    from playwright.sync_api import expect

    return expect


def _open(pg, url: str) -> None:
    """Load the page and wait until it answers events (see test_app_browser16._open)."""
    expect = _expect()
    pg.goto(url)
    expect(pg.locator("#layer-info")).to_contain_text("tokens =", timeout=TIMEOUT)
    tiles = pg.locator("#layer-strip button.thumbnail-item")
    tiles.nth(0).click()
    expect(pg.locator("#layer-info")).to_contain_text("After block 0", timeout=TIMEOUT)
    tiles.nth(tiles.count() - 1).click()
    expect(pg.locator("#layer-info")).to_contain_text(
        f"After block {tiles.count() - 1}", timeout=TIMEOUT
    )
    pg.evaluate("window.scrollTo(0, 0)")
    pg.wait_for_timeout(300)


def _inside(box, width, height) -> bool:
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= width + 0.5
        and box["y"] + box["height"] <= height + 0.5
    )


@pytest.mark.parametrize("width, height", [(1280, 720), (1920, 1080)])
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_presenter_view_fits_the_first_viewport(browser, url, width, height, theme):
    pg = browser.new_page(viewport={"width": width, "height": height})
    _open(pg, url + ("?__theme=dark" if theme == "dark" else ""))
    for sel in ("#layer-map", "#layer-strip", "#preds-row", "#play-button"):
        box = pg.locator(sel).bounding_box()
        assert box and _inside(box, width, height), (sel, box, width, height)
    # the map is large: at least 440 px square on a 720 px high screen, 700 px on 1080
    img = pg.locator("#layer-map img").bounding_box()
    assert min(img["width"], img["height"]) >= (440 if height == 720 else 700), img
    # the predictions beside the map, every strip tile inside the strip
    tiles = pg.locator("#layer-strip button.thumbnail-item")
    assert tiles.count() == 12
    for i in range(12):
        assert _inside(tiles.nth(i).bounding_box(), width, height), i
    # the tokens chart's smallest text is 12 px or more at the width it is shown
    chart = pg.locator("#tokens-chart img").bounding_box()
    assert charts.chart_text_px(chart["width"]) >= 12, chart
    ROOT.joinpath("artifacts").mkdir(exist_ok=True)
    pg.screenshot(path=str(ROOT / "artifacts" / f"presenter-{width}x{height}-{theme}.png"))
    if width == 1280 and theme == "light" and os.environ.get("TCA_UPDATE_SCREENSHOT"):
        pg.screenshot(path=str(ROOT / "docs" / "presenter.png"))
    pg.close()


def _selected(pg) -> int:
    return pg.evaluate(
        "() => [...document.querySelectorAll('#layer-strip button.thumbnail-item')]"
        ".findIndex(e => e.classList.contains('selected'))"
    )


def test_play_moves_map_strip_and_chart_together_and_pause_stops(browser, url):
    expect = _expect()
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    _open(pg, url)
    info, play = pg.locator("#layer-info"), pg.locator("#play-button")
    chart_before = pg.locator("#tokens-chart img").get_attribute("src")
    map_before = pg.locator("#layer-map img").get_attribute("src")
    play.click()  # from the last block: starts again at block 0
    expect(play).to_have_text(PAUSE_LABEL, timeout=TIMEOUT)
    expect(info).to_contain_text("After block 2", timeout=TIMEOUT)
    # one tick's answer moves the map, the slider, the strip highlight and the chart together:
    # read all of them right after the info moved to block 3
    expect(info).to_contain_text("After block 3", timeout=TIMEOUT)
    got = pg.evaluate(
        """() => ({
        info: document.querySelector('#layer-info').innerText,
        slider: document.querySelector('#layer-slider input[type=number]').value,
        strip: [...document.querySelectorAll('#layer-strip button.thumbnail-item')]
            .findIndex(e => e.classList.contains('selected')),
        chart: document.querySelector('#tokens-chart img').getAttribute('src'),
        map: document.querySelector('#layer-map img').getAttribute('src')})"""
    )
    block = int(got["slider"])
    assert f"After block {block}" in got["info"] and got["strip"] == block, got
    assert got["chart"] != chart_before and got["map"] != map_before
    play.click()
    expect(play).to_have_text(PLAY_LABEL, timeout=TIMEOUT)
    pg.wait_for_timeout(600)  # a tick in flight when pausing may still land
    paused_at = _selected(pg)
    text = info.inner_text()
    pg.wait_for_timeout(2500)  # more than two ticks' time
    assert _selected(pg) == paused_at and info.inner_text() == text
    # played to the end, it stops on its own at the last block
    play.click()
    expect(info).to_contain_text("After block 11", timeout=TIMEOUT)
    expect(play).to_have_text(PLAY_LABEL, timeout=TIMEOUT)
    pg.wait_for_timeout(1500)
    assert "After block 11" in info.inner_text() and _selected(pg) == 11
    pg.close()


def test_stop_following_shows_only_while_following(browser, url):
    expect = _expect()
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    _open(pg, url)
    stop = pg.locator("#stop-following")
    expect(stop).to_be_hidden()
    img = pg.locator("#layer-map img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    expect(pg.locator("#follow-panel")).to_contain_text("Following patch", timeout=TIMEOUT)
    expect(stop).to_be_visible()
    # a strip tile and Stop following at once: the page ends on that block, following nothing
    pg.locator("#layer-strip button.thumbnail-item").nth(4).click()
    stop.click()
    expect(stop).to_be_hidden(timeout=TIMEOUT)
    expect(pg.locator("#layer-info")).to_contain_text("After block 4", timeout=TIMEOUT)
    pg.wait_for_timeout(1000)
    expect(pg.locator("#follow-panel")).to_contain_text("Click a patch")
    expect(pg.locator("#why-chart")).to_be_hidden()
    pg.close()


def test_phone_flow(browser, url):
    expect = _expect()
    w, h = 390, 844
    pg = browser.new_page(viewport={"width": w, "height": h})
    _open(pg, url)
    # the three tabs are on screen, none behind Gradio's "..." menu; the footer has the API link
    for name in ("Explore", "Compare methods", "How it works"):
        expect(pg.get_by_role("tab", name=name)).to_be_visible()
    expect(pg.locator("footer .show-api")).to_be_visible()
    # among the settings (the last control, far below Run in the page), Run is on screen
    pg.get_by_text("Prompt templates").first.scroll_into_view_if_needed()
    pg.wait_for_timeout(300)
    assert _inside(pg.locator("#run-button").bounding_box(), w, h)
    # a changed setting: the Outdated notice is where the visitor is
    labels = pg.locator("#labels-input textarea")
    labels.fill("cat, dog, tiger, fox")
    notice = pg.locator("#stale-notice .tca-stale")
    expect(notice).to_contain_text("Outdated", timeout=TIMEOUT)
    assert _inside(notice.bounding_box(), w, h)
    # Run: the predictions come into view, and the run's answer arrives there
    pg.locator("#run-button").click()
    expect(pg.locator("#stale-notice")).not_to_contain_text("Outdated", timeout=TIMEOUT)
    pg.wait_for_timeout(800)
    preds = pg.locator("#preds-row").bounding_box()
    assert -1 <= preds["y"] < h / 2, preds
    expect(pg.locator("#condensed-label")).not_to_contain_text("rabbit")
    # the follow table fits or scrolls inside its box
    pg.locator("#layer-map img").click()
    expect(pg.locator("#follow-panel")).to_contain_text("Following patch", timeout=TIMEOUT)
    table = pg.locator("#follow-panel table").bounding_box()
    scroller = pg.locator("#follow-panel .tca-scroll").bounding_box()
    assert scroller["x"] + scroller["width"] <= w
    assert table["width"] <= scroller["width"] + 0.5 or pg.locator(
        "#follow-panel .tca-scroll"
    ).evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).overflowX === 'auto'")
    pg.screenshot(path=str(ROOT / "artifacts" / "phone-after-run.png"))
    pg.close()


def test_fullscreen_fills_the_screen_with_the_map(browser, url):
    expect = _expect()
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    _open(pg, url)
    before = pg.locator("#layer-map img").bounding_box()
    assert before["height"] < 600
    pg.locator("#layer-map .icon-button-wrapper button").first.click()  # Gradio's fullscreen
    expect(pg.locator("#layer-map")).to_have_class(re.compile(r"\bfullscreen\b"))
    pg.wait_for_timeout(800)
    box = pg.locator("#layer-map img").bounding_box()
    assert box["height"] == pytest.approx(720, abs=1) and box["width"] == pytest.approx(720, abs=1)
    pg.locator("#layer-map .icon-button-wrapper button").first.click()
    expect(pg.locator("#layer-map")).not_to_have_class(re.compile(r"\bfullscreen\b"))
    pg.close()
