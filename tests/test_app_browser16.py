"""Issue 16 in a real browser (Debian's chromium, Playwright) against the app launched
in-process on the tiny open_clip ViT: the stacked token count on the page adds up to the token
count for every method, following a patch shows "why this patch?", and the dark theme keeps the
weights banner and the shift colours readable (WCAG AA contrast)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app as app_module  # noqa: E402
from tca.methods import METHODS  # noqa: E402

BROWSER = os.environ.get("TCA_BROWSER", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT = 60_000
SUM = re.compile(r"After block (\d+)[^:]*: (\d+) tokens = ([^.]+)\.")

# The effective background of an element: the first non-transparent one up its ancestors.
BACKGROUND_JS = """el => {
  for (let e = el; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
  }
  return getComputedStyle(document.body).backgroundColor;
}"""


@pytest.fixture(scope="module")
def url():
    demo = app_module.build_demo("tca-tiny-ViT", "none")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    try:
        yield local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(BROWSER).exists():
        pytest.skip(f"no browser at {BROWSER} (scripts/test.sh installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=ARGS)
        yield b
        b.close()


def _rgb(css: str) -> tuple[float, ...]:
    return tuple(float(v) for v in re.findall(r"[\d.]+", css)[:3])


def _luminance(rgb) -> float:
    def lin(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    a, b = sorted((_luminance(_rgb(fg)), _luminance(_rgb(bg))), reverse=True)
    return (a + 0.05) / (b + 0.05)


def _open(pg, url: str) -> None:
    """Load the page and wait until it answers events: the first screen is in the HTML before
    the page is connected, so a click that early is lost. A strip tile's click is answered by
    the server (the layer panel moves to that block), then back to the last block."""
    pg.goto(url)
    expect(pg.locator("#layer-info")).to_contain_text("tokens =", timeout=TIMEOUT)
    tiles = pg.locator("#layer-strip button.thumbnail-item")
    tiles.nth(0).click()
    expect(pg.locator("#layer-info")).to_contain_text("After block 0", timeout=TIMEOUT)
    tiles.nth(tiles.count() - 1).click()
    expect(pg.locator("#layer-info")).to_contain_text(
        f"After block {tiles.count() - 1}", timeout=TIMEOUT
    )


def test_contrast_formula():
    assert contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)") == pytest.approx(21.0)
    assert contrast("rgb(118, 118, 118)", "rgb(255, 255, 255)") == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_banner_and_shift_colours_are_readable(browser, url, theme):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url + ("?__theme=dark" if theme == "dark" else ""))
    expect(pg.locator("#weights-banner")).to_contain_text("RANDOM WEIGHTS", timeout=TIMEOUT)
    expect(pg.locator(".tca-shift .tca-up, .tca-shift .tca-down").first).to_be_visible(
        timeout=TIMEOUT
    )
    checked = 0
    for sel in (
        "#weights-banner b",
        "#weights-banner .tca-random",
        "#weights-banner summary",
        ".tca-shift .tca-up",
        ".tca-shift .tca-down",
    ):
        for el in pg.locator(sel).all():
            fg = el.evaluate("e => getComputedStyle(e).color")
            bg = el.evaluate(BACKGROUND_JS)
            assert contrast(fg, bg) >= 4.5, (theme, sel, fg, bg)
            checked += 1
    assert checked >= 4
    pg.close()


def test_stacked_counts_add_up_on_the_page_for_every_method(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(pg, url)
    for m in METHODS.values():
        pg.get_by_text(m.label, exact=True).click()
        pg.locator("#run-button").click()
        title = f"Condensed: {m.title}," if m.step is not None else "Condensed: none"
        expect(pg.locator("#condensed-label")).to_contain_text(title, timeout=TIMEOUT)
        expect(pg.locator("#stale-notice")).not_to_contain_text("Outdated", timeout=TIMEOUT)
        if m.fates.group_token:  # the layer panel of this run (not the last one's) is shown
            expect(pg.locator("#layer-info")).to_contain_text(m.fates.group_token, timeout=TIMEOUT)
        text = pg.locator("#layer-info").inner_text()
        found = SUM.search(text)
        assert found, (m.name, text)
        layer, total, parts = int(found[1]), int(found[2]), found[3]
        numbers = [int(n) for n in re.findall(r"(\d+) [a-zA-Z]", parts)]
        assert sum(numbers) == total, (m.name, text)
        caption = pg.locator("#layer-strip button.thumbnail-item").nth(layer).inner_text()
        assert caption.strip().endswith(f"\u00b7 {total}"), (m.name, caption)
        words = [w for w in (m.fates.group_token, m.fates.fused_token) if w]
        for w in words:
            assert w in parts, (m.name, parts)
    pg.close()


def test_following_a_patch_shows_why(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(pg, url)
    expect(pg.locator("#why-chart")).to_be_hidden()
    img = pg.locator("#layer-map img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    expect(pg.locator("#follow-panel")).to_contain_text("Following patch", timeout=TIMEOUT)
    expect(pg.locator("#why-chart img")).to_be_visible(timeout=TIMEOUT)
    pg.get_by_role("button", name="Stop following").click()
    expect(pg.locator("#why-chart")).to_be_hidden(timeout=TIMEOUT)
    pg.close()


def test_one_click_stream_demo_reaches_active_anchors(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(pg, url)
    pg.get_by_text("Stream mode: TCA's reservoir").first.click()
    pg.locator("#stream-demo-button").click()
    panel = pg.locator("#stream-demo")
    expect(panel).to_contain_text("Anchors on after", timeout=TIMEOUT)
    expect(panel).to_contain_text("with anchors (and the logits correction)")
    expect(pg.locator("#stream-demo-picture img")).to_be_visible(timeout=TIMEOUT)
    # the session's own reservoir is untouched: stream mode is still off
    expect(pg.locator("#stream-panel")).to_contain_text("Stream mode is off")
    pg.screenshot(path="/tmp/ui16_shots/stream_demo.png", full_page=False)
    pg.close()


@pytest.fixture(scope="module")
def url24():
    """The app on a 24-block tower (ViT-L/14's depth, the tiny width)."""
    demo = app_module.build_demo("tca-tiny24-ViT", "none")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    try:
        yield local_url
    finally:
        demo.close()


@pytest.mark.parametrize("width, height", [(1280, 720), (1920, 1080), (390, 844)])
def test_all_24_strip_tiles_inside_the_strip(browser, url24, width, height):
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.goto(url24)
    tiles = pg.locator("#layer-strip button.thumbnail-item")
    expect(tiles).to_have_count(24, timeout=TIMEOUT)
    strip = pg.locator("#layer-strip").bounding_box()
    for i in range(24):
        t = tiles.nth(i).bounding_box()
        assert (
            strip["x"] - 1 <= t["x"] and t["x"] + t["width"] <= strip["x"] + strip["width"] + 1
        ), (width, i, t, strip)
        assert t["width"] >= 60  # still a picture, not a sliver
    pg.close()


def test_an_input_error_keeps_the_last_run_intact_and_outdated(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(pg, url)
    before = {sel: pg.locator(sel).inner_text() for sel in ("#condensed-label", "#layer-info")}
    map_src = pg.locator("#layer-map img").get_attribute("src")
    blocks = pg.locator("#layers-input textarea, #layers-input input").first
    blocks.fill("3,six,9")
    expect(pg.locator("#stale-notice")).to_contain_text("Outdated", timeout=TIMEOUT)
    pg.locator("#run-button").click()
    toast = pg.locator(".toast-body")
    expect(toast).to_contain_text("Cannot run", timeout=TIMEOUT)
    expect(toast).to_contain_text("layers must be comma-separated integers")
    pg.wait_for_timeout(500)
    # one message; every panel still shows the last complete run, none an error badge
    for sel, text in before.items():
        assert pg.locator(sel).inner_text() == text
    assert pg.locator("#layer-map img").get_attribute("src") == map_src
    for sel in (
        "#baseline-label",
        "#condensed-label",
        "#layer-map",
        "#layer-strip",
        "#tokens-chart",
    ):
        assert pg.locator(f"{sel} .error").count() == 0, sel
    expect(pg.locator("#stale-notice")).to_contain_text("Outdated")
    pg.close()
