"""A real browser (Debian's chromium, driven by Playwright) against the app launched in-process:
the first screen shows a complete result without a click; run an upload; linked depth (strip
tile click, arrows, chart); follow a patch; the keep-rate sweep; compare methods. Screenshots of
the first screen, a merged-group map and follow-a-patch go to artifacts/ (docs/app.png is the
first screen, refreshed with TCA_UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app as app_module  # noqa: E402
from tca import render  # noqa: E402
from tca.app import page as page_module  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="module")
def served():
    demo = app_module.build_demo("tca-tiny-ViT", "none")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    try:
        yield demo, local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url(served):
    return served[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(BROWSER).exists():
        pytest.skip(f"no browser at {BROWSER} (scripts/test.sh installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, url):
    """One page shared by the tests below, in order (first screen first)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    yield pg
    pg.close()


def _selected_re():
    return re.compile(r"\bselected\b")


def _img_src(page, selector: str) -> str | None:
    return page.locator(f"{selector} img").first.get_attribute("src")


def test_first_screen_shows_a_result_without_a_click(page, artifacts_dir):
    # the first curated example's complete result is there on load: no click anywhere
    for panel in ("#baseline-label", "#condensed-label"):
        for label in ("cat", "dog", "tiger", "fox", "rabbit"):
            expect(page.locator(panel)).to_contain_text(label, timeout=TIMEOUT)
    expect(page.locator("#weights-banner")).to_contain_text("RANDOM WEIGHTS")
    expect(page.locator("#weights-banner")).to_contain_text(
        "maps, token counts and FLOPs are exact"
    )
    # operator instructions folded away behind a toggle
    expect(page.locator("#weights-banner details")).to_have_count(1)
    assert page.locator("#weights-banner details").evaluate("d => d.open") is False
    assert "TCA_CHECKPOINT" in page.locator("#weights-banner details").text_content()
    expect(page.locator("#layer-map img")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#tokens-chart img")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#layer-info")).to_contain_text("After block 11")
    expect(page.locator("#layer-info")).to_contain_text("74 tokens")
    expect(page.locator("#layer-strip button.thumbnail-item")).to_have_count(12)
    expect(page.locator("#layer-strip button.thumbnail-item").nth(11)).to_have_class(_selected_re())
    cost = page.locator("#cost-panel")
    expect(cost).to_contain_text("saved")
    expect(cost).to_contain_text("tokens after the last block")
    expect(page.locator("#shift")).to_contain_text("pp")
    expect(page.locator("#stale-notice")).not_to_contain_text("Outdated")
    expect(page.locator("#image-input img")).to_be_visible(timeout=TIMEOUT)
    box = page.locator("#layer-map img").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts_dir / "app.png"))
    for i in range(12):  # the strip's tiles load lazily: bring them in before the full shot
        page.locator("#layer-strip button.thumbnail-item").nth(i).scroll_into_view_if_needed()
    page.locator("#layer-map").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "first-screen-full.png"), full_page=True)
    page.evaluate("window.scrollTo(0, 0)")
    if os.environ.get("TCA_UPDATE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copyfile(artifacts_dir / "first-screen-full.png", ROOT / "docs" / "app.png")
    assert page.locator(".toast-body.error, [data-testid='toast-body'].error").count() == 0


def test_clicking_a_strip_tile_highlights_it_and_updates_the_map(page):
    before = _img_src(page, "#layer-map")
    tile = page.locator("#layer-strip button.thumbnail-item").nth(5)
    tile.click()
    expect(tile).to_have_class(_selected_re(), timeout=TIMEOUT)
    expect(page.locator("#layer-strip button.thumbnail-item").nth(11)).not_to_have_class(
        _selected_re()
    )
    expect(page.locator("#layer-info")).to_contain_text("After block 5", timeout=TIMEOUT)
    expect(page.locator("#layer-slider input[type=number]")).to_have_value("5", timeout=TIMEOUT)
    expect(page.locator("#layer-map img")).not_to_have_attribute(
        "src", before or "", timeout=TIMEOUT
    )
    # the big map is in view after the click
    expect(page.locator("#layer-map img")).to_be_in_viewport(timeout=TIMEOUT)
    # the arrows step one block and move the strip's highlight along
    page.locator("#next-block").click()
    expect(page.locator("#layer-info")).to_contain_text("After block 6", timeout=TIMEOUT)
    expect(page.locator("#layer-strip button.thumbnail-item").nth(6)).to_have_class(
        _selected_re(), timeout=TIMEOUT
    )
    page.locator("#prev-block").click()
    expect(page.locator("#layer-info")).to_contain_text("After block 5", timeout=TIMEOUT)
    page.locator("#prev-block").click()
    expect(page.locator("#layer-info")).to_contain_text("After block 4", timeout=TIMEOUT)


def test_follow_a_patch_lights_its_group(page, served, artifacts_dir):
    state = served[0].tca_app.first_screen()
    trace = state.trace
    tile = page.locator("#layer-strip button.thumbnail-item").nth(11)
    tile.click()
    expect(page.locator("#layer-info")).to_contain_text("After block 11", timeout=TIMEOUT)
    lv = render.layer_view(trace, 11)
    merged = int(np.flatnonzero(lv.fate.ravel() == 1)[0])
    group = int((lv.token == lv.token.flat[merged]).sum())
    assert group >= 2
    rows, cols = trace.grid
    r, c = divmod(merged, cols)
    img = page.locator("#layer-map img")
    before = img.get_attribute("src")
    box = img.bounding_box()
    img.click(
        position={"x": (c + 0.5) * box["width"] / cols, "y": (r + 0.5) * box["height"] / rows}
    )
    panel = page.locator("#follow-panel")
    expect(panel).to_contain_text(f"Following patch (row {r}, column {c})", timeout=TIMEOUT)
    expect(panel).to_contain_text(f"{group - 1} other patch", timeout=TIMEOUT)
    expect(panel).to_contain_text("merged into group")
    expect(panel).to_contain_text("CLS-attention rank")
    expect(img).not_to_have_attribute("src", before or "", timeout=TIMEOUT)
    # what the browser shows is the highlighted map: the clicked patch framed, partners lit
    expected = page_module.map_image(state, page_module.Display(11, patch=merged))
    others = [
        p for p in range(rows * cols) if lv.token.flat[p] == lv.token.flat[merged] and p != merged
    ]
    assert others  # at least one other patch of its group is lit
    ph = expected.shape[0] // rows
    plain = page_module.map_image(state, page_module.Display(11))
    o = others[0]
    orow, ocol = divmod(o, cols)
    cell = (
        slice(orow * ph + ph // 3, orow * ph + 2 * ph // 3),
        slice(ocol * ph + ph // 3, ocol * ph + 2 * ph // 3),
    )
    assert np.array_equal(expected[cell], plain[cell])  # the partner keeps its colours
    page.wait_for_timeout(400)
    page.locator("#layer-map").screenshot(path=str(artifacts_dir / "follow-a-patch.png"))
    page.screenshot(path=str(artifacts_dir / "follow-a-patch-page.png"))


def test_display_only_controls_rerender(page):
    before = _img_src(page, "#layer-map")
    page.get_by_text("what the model sees").first.click()
    expect(page.locator("#layer-map img")).not_to_have_attribute(
        "src", before or "", timeout=TIMEOUT
    )
    page.get_by_text("fates (kept").first.click()
    before = _img_src(page, "#layer-map")
    page.get_by_label("CLS-attention overlay").check()
    expect(page.locator("#layer-info")).to_contain_text(
        "Overlay: CLS attention at block 9", timeout=TIMEOUT
    )
    expect(page.locator("#layer-map img")).not_to_have_attribute(
        "src", before or "", timeout=TIMEOUT
    )
    # the depth slider's number box: jump to block 4
    number = page.locator("#layer-slider input[type=number]")
    number.fill("4")
    number.press("Enter")
    expect(page.locator("#layer-info")).to_contain_text(
        "After block 4: 141 tokens", timeout=TIMEOUT
    )
    page.get_by_label("CLS-attention overlay").uncheck()


def test_changed_inputs_mark_results_outdated_then_run(page, artifacts_dir):
    page.locator("#image-input input[type=file]").set_input_files(
        str(ROOT / "assets" / "coffee.jpg")
    )
    expect(page.locator("#stale-notice")).to_contain_text("Outdated", timeout=TIMEOUT)
    box = page.locator("#labels-input textarea")
    box.fill("cup of coffee")
    box.press("Enter")  # Enter adds a line in a box for one-label-per-line ...
    box.type("teapot")
    expect(box).to_have_value("cup of coffee\nteapot")
    expect(page.locator("#condensed-label")).to_contain_text("rabbit")  # ... and runs nothing
    # ToMe: many merged groups, each its own colour
    page.get_by_text("ToMe (merge pairs)").click()
    box.press("Shift+Enter")  # Shift+Enter runs
    expect(page.locator("#condensed-label")).to_contain_text("teapot", timeout=TIMEOUT)
    expect(page.locator("#condensed-label")).not_to_contain_text("rabbit", timeout=TIMEOUT)
    expect(page.locator("#stale-notice")).not_to_contain_text("Outdated", timeout=TIMEOUT)
    expect(page.locator("#layer-info")).to_contain_text("After block 4", timeout=TIMEOUT)
    page.locator("#layer-strip button.thumbnail-item").nth(11).click()
    expect(page.locator("#layer-info")).to_contain_text("After block 11", timeout=TIMEOUT)
    expect(page.locator("#layer-info")).to_contain_text("merged in", timeout=TIMEOUT)
    # the tile's answer has reached the follow panel too (a patch followed in an earlier test
    # may still be), so Stop is not overtaken by it
    expect(page.locator("#follow-panel")).to_contain_text(
        re.compile("after block 11|Click a patch"), timeout=TIMEOUT
    )
    page.get_by_role("button", name="Stop following").click()
    expect(page.locator("#follow-panel")).to_contain_text("Click a patch", timeout=TIMEOUT)
    page.wait_for_timeout(400)
    page.locator("#layer-map").screenshot(path=str(artifacts_dir / "merged-groups.png"))


def test_keep_rate_sweep_plot_appears(page):
    page.get_by_text("Keep-rate sweep").first.click()
    page.locator("#sweep-button").click()
    expect(page.locator("#sweep-plot img")).to_be_visible(timeout=TIMEOUT)
    table = page.locator("#sweep-table")
    expect(table).to_contain_text("KL", timeout=TIMEOUT)
    for r in ("0.3", "0.5", "0.9"):
        expect(table).to_contain_text(r)
    # the shown Run's baseline is reused; R = 1 is the baseline itself
    expect(table).to_contain_text("One job: the Run's baseline + 7 condensed passes")


def test_first_screen_computed_in_the_background_fills_the_page(browser):
    """As `python app.py` serves it: HTTP at once, the first screen from a background thread,
    handed to every new page by the load event."""
    demo = app_module.build_demo("tca-tiny-ViT", "none", first_screen="background")
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    try:
        pg = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        pg.goto(local_url)
        expect(pg.locator("#condensed-label")).to_contain_text("rabbit", timeout=TIMEOUT)
        expect(pg.locator("#layer-info")).to_contain_text("After block 11", timeout=TIMEOUT)
        expect(pg.locator("#labels-input textarea")).to_have_value("cat, dog, tiger, fox, rabbit")
        expect(pg.locator("#stale-notice")).not_to_contain_text("Outdated")
        # on a phone the results come before the settings
        assert (
            pg.locator("#layer-map").bounding_box()["y"]
            < pg.locator("#image-input").bounding_box()["y"]
        )
        pg.close()
    finally:
        demo.close()


def test_no_image_shows_an_error_and_the_app_survives(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    expect(pg.locator("#layer-map img")).to_be_visible(timeout=TIMEOUT)
    pg.locator("#image-input button[aria-label='Remove Image']").first.click()
    pg.locator("#labels-input textarea").fill("cat, dog")
    pg.locator("#run-button").click()
    expect(pg.get_by_text("no image: upload an image").first).to_be_visible(timeout=TIMEOUT)
    # the app still works on that page: pick a curated example and run it
    pg.get_by_text("cup of coffee, glass of beer").first.click()
    expect(pg.locator("#labels-input textarea")).to_have_value(
        "cup of coffee, glass of beer, bowl of soup, teapot, plate", timeout=TIMEOUT
    )
    expect(pg.locator("#image-input img")).to_be_visible(timeout=TIMEOUT)
    pg.locator("#run-button").click()
    expect(pg.locator("#condensed-label")).to_contain_text("teapot", timeout=TIMEOUT)
    expect(pg.locator("#cost-panel")).to_contain_text("saved", timeout=TIMEOUT)
    pg.close()


def test_a_file_that_is_no_image_is_refused_on_upload(browser, url, tmp_path):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    expect(pg.locator("#layer-map img")).to_be_visible(timeout=TIMEOUT)
    bad = tmp_path / "notes.png"
    bad.write_text("hello, I am not a PNG")
    pg.locator("#image-input input[type=file]").set_input_files(str(bad))
    expect(pg.get_by_text("Image:").first).to_be_visible(timeout=TIMEOUT)
    expect(pg.get_by_text("not a readable image").first).to_be_visible(timeout=TIMEOUT)
    pg.close()


def test_compare_tab(page):
    page.get_by_role("tab", name="Compare methods").click()
    page.locator("#compare-button").click()
    expect(page.locator("#compare-maps img")).to_be_visible(timeout=TIMEOUT)
    table = page.locator("#compare-table")
    for name in ("TCA", "EViT", "ToMe", "baseline CLIP"):
        expect(table).to_contain_text(name, timeout=TIMEOUT)
    page.get_by_role("tab", name="How it works").click()
    expect(page.get_by_role("heading", name="The map legend")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("logits correction").first).to_be_attached()
