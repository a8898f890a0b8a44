"""Issue 19 in a real browser (Debian's chromium, Playwright) against the app launched
in-process on the tiny open_clip ViT: the precision under the Model control in
both themes, and a curated example's click that runs it (the second time from the cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

import app as app_module  # noqa: E402
from tests.test_app_browser16 import (  # noqa: E402
    BACKGROUND_JS,
    TIMEOUT,
    _open,
    browser,  # noqa: F401 - the fixture
    contrast,
)

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_precision_shown_by_the_model_control(browser, served, theme):  # noqa: F811
    demo, url = served
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url + ("?__theme=dark" if theme == "dark" else ""))
    line = pg.locator("#model-select").get_by_text("Precision: ")
    expect(line).to_have_text(f"Precision: {demo.tca_app.placement.describe()}", timeout=TIMEOUT)
    expect(line).to_be_visible()
    fg = line.evaluate("e => getComputedStyle(e).color")
    assert contrast(fg, line.evaluate(BACKGROUND_JS)) >= 4.5, (theme, fg)  # WCAG AA
    if theme == "light":
        out = ROOT / "artifacts"
        out.mkdir(exist_ok=True)
        pg.screenshot(
            path=str(out / "precision_line.png"),
            full_page=True,
        )
    pg.close()


def test_an_example_click_runs_it_and_again_from_the_cache(browser, served):  # noqa: F811
    demo, url = served
    app = demo.tca_app
    items = app_module.examples()
    pg = browser.new_page(viewport={"width": 1400, "height": 1100})
    _open(pg, url)
    cached = len(app.example_runs)
    rows = pg.locator("#tca-examples tbody tr")
    for i in (1, 2, 1):  # coffee, rocket, coffee again: the last from the cache
        labels = [l.strip() for l in items[i][1].split(",")]
        rows.nth(i).click()
        expect(pg.locator("#labels-input textarea")).to_have_value(items[i][1], timeout=TIMEOUT)
        # its Run is on screen: the baseline's bars are the example's labels
        shown = pg.locator("#baseline-label")
        for label in labels[:3]:
            expect(shown).to_contain_text(label, timeout=TIMEOUT)
        expect(pg.locator("#stale-notice")).to_have_text("", timeout=TIMEOUT)
    assert len(app.example_runs) == cached + 2  # two examples run, the third click was a hit
    pg.close()
