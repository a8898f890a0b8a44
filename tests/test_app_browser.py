"""A real browser (Debian's chromium, driven by Playwright) against the app launched in-process:
upload an example, run, and check that predictions, token maps and the FLOP panel appear;
scrub the depth, compare methods, and save a screenshot (artifacts/app.png, docs/app.png)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app as app_module  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BROWSER = os.environ.get("TCA_BROWSER", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def url():
    demo = app_module.build_demo("tca-tiny-ViT", "none")
    _, local_url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                                  **app_module.launch_options())
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


@pytest.fixture(scope="module")
def page(browser, url):
    """One page shared by the tests below, in order (upload and run first)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    yield pg
    pg.close()


def _img_src(page, selector: str) -> str | None:
    return page.locator(f"{selector} img").first.get_attribute("src")


def test_upload_run_and_see_results(page, artifacts_dir):
    # the banner cannot be missed: random weights
    expect(page.locator("#weights-banner")).to_contain_text("RANDOM WEIGHTS", timeout=TIMEOUT)
    page.locator("#image-input input[type=file]").set_input_files(str(ROOT / "assets" / "chelsea.jpg"))
    expect(page.locator("#image-input img")).to_be_visible(timeout=TIMEOUT)
    page.locator("#labels-input textarea").fill("cat, dog, tiger, fox, rabbit")
    page.locator("#run-button").click()

    # predictions: both label panels list the candidate labels
    for panel in ("#baseline-label", "#condensed-label"):
        for label in ("cat", "dog", "tiger", "fox", "rabbit"):
            expect(page.locator(panel)).to_contain_text(label, timeout=TIMEOUT)
    expect(page.locator("#shift")).to_contain_text("pp")
    # the FLOP panel
    cost = page.locator("#cost-panel")
    expect(cost).to_contain_text("saved", timeout=TIMEOUT)
    expect(cost).to_contain_text("GMACs")
    expect(cost).to_contain_text("tokens after the last block")
    # maps: the current layer and the strip of all layers, and the chart
    expect(page.locator("#layer-map img")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#layer-strip img")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#tokens-chart img")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#layer-info")).to_contain_text("After block 11: 74 tokens")
    box = page.locator("#layer-map img").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts_dir / "app.png"), full_page=True)
    if os.environ.get("TCA_UPDATE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copyfile(artifacts_dir / "app.png", ROOT / "docs" / "app.png")
    assert page.locator(".toast-body.error, [data-testid='toast-body'].error").count() == 0


def test_display_only_controls_rerender(page):
    before = _img_src(page, "#layer-map")
    page.get_by_label("CLS-attention overlay").check()
    expect(page.locator("#layer-info")).to_contain_text("Overlay: CLS attention at block 9",
                                                         timeout=TIMEOUT)
    expect(page.locator("#layer-map img")).not_to_have_attribute("src", before or "", timeout=TIMEOUT)
    # the depth slider's number box: jump to block 4
    number = page.locator("#layer-slider input[type=number]")
    number.fill("4")
    number.press("Enter")
    expect(page.locator("#layer-info")).to_contain_text("After block 4: 141 tokens", timeout=TIMEOUT)


def test_clicking_a_strip_tile_selects_that_block(page):
    strip = page.locator("#layer-strip img")
    natural = strip.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    box = strip.bounding_box()
    # the tile of block 5 (row 0, column 5 of 6): its centre, in displayed pixels
    tile = (natural[0] - 4) / 6
    x = (4 + 5 * tile + tile / 2) * box["width"] / natural[0]
    y = natural[1] * 0.25 * box["height"] / natural[1]
    strip.click(position={"x": x, "y": y})
    expect(page.locator("#layer-info")).to_contain_text("After block 5", timeout=TIMEOUT)
    expect(page.locator("#layer-slider input[type=number]")).to_have_value("5", timeout=TIMEOUT)


def test_enter_in_labels_reruns(page):
    box = page.locator("#labels-input textarea")
    box.fill("cat, dog")
    box.press("Enter")
    expect(page.locator("#condensed-label")).not_to_contain_text("rabbit", timeout=TIMEOUT)
    expect(page.locator("#shift")).not_to_contain_text("tiger", timeout=TIMEOUT)


def test_no_image_shows_an_error_and_the_app_survives(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    pg.locator("#labels-input textarea").fill("cat, dog")
    pg.locator("#run-button").click()
    expect(pg.get_by_text("no image: upload an image").first).to_be_visible(timeout=TIMEOUT)
    # the app still works on that page: pick a curated example and run it
    pg.get_by_text("cup of coffee, glass of beer").first.click()
    expect(pg.locator("#labels-input textarea")).to_have_value(
        "cup of coffee, glass of beer, bowl of soup, teapot, plate", timeout=TIMEOUT)
    expect(pg.locator("#image-input img")).to_be_visible(timeout=TIMEOUT)
    pg.locator("#run-button").click()
    expect(pg.locator("#condensed-label")).to_contain_text("teapot", timeout=TIMEOUT)
    expect(pg.locator("#cost-panel")).to_contain_text("saved", timeout=TIMEOUT)
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
