"""The Compare tab in a real Chromium: it opens with every method compared (the first example,
at equal GMACs), shows the disagreement of two methods, and is marked Outdated once the Explore
tab's inputs change. Tiny random-weight model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app as app_module  # noqa: E402
from tca.app.runs import ALL_METHODS  # noqa: E402
from tca.methods import METHODS  # noqa: E402

BROWSER = os.environ.get("TCA_BROWSER", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
TIMEOUT = 90_000


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


def test_compare_shows_every_method_and_the_outdated_mark(browser, url, artifacts_dir):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url)
    # the page answers events once a strip tile's click reaches the layer panel
    expect(pg.locator("#layer-info")).to_contain_text("tokens =", timeout=TIMEOUT)
    pg.locator("#layer-strip button.thumbnail-item").nth(0).click()
    expect(pg.locator("#layer-info")).to_contain_text("After block 0", timeout=TIMEOUT)

    pg.get_by_role("tab", name="Compare methods").click()  # opens on a comparison, no click
    table = pg.locator("#compare-table")
    expect(table).to_contain_text("Equal GMACs", timeout=TIMEOUT)
    rows = table.locator("tr[data-method]")
    expect(rows).to_have_count(len(ALL_METHODS), timeout=TIMEOUT)
    assert [rows.nth(i).get_attribute("data-method") for i in range(rows.count())] == list(
        ALL_METHODS
    )
    for m in ALL_METHODS:
        expect(table).to_contain_text(METHODS[m].title)
    expect(pg.locator("#compare-maps img")).to_be_visible(timeout=TIMEOUT)
    expect(pg.locator("#compare-disagree")).to_contain_text(
        "kept by TCA, merged or pruned by EViT", timeout=TIMEOUT
    )
    expect(pg.locator("#compare-disagree-map img")).to_be_visible(timeout=TIMEOUT)
    expect(pg.locator("#compare-stale")).not_to_contain_text("Outdated")
    pg.locator("#compare-b input").click()
    pg.get_by_role("option", name="ToMe (paper)").click()
    expect(pg.locator("#compare-disagree")).to_contain_text(
        "kept by ToMe (paper), merged or pruned by TCA", timeout=TIMEOUT
    )
    pg.screenshot(path=str(artifacts_dir / "compare-tab.png"), full_page=True)

    # an Explore input changes: the comparison on screen is marked Outdated
    pg.get_by_role("tab", name="Explore").click()
    pg.locator("#labels-input textarea").fill("cat, dog, teapot")
    pg.get_by_role("tab", name="Compare methods").click()
    stale = pg.locator("#compare-stale")
    expect(stale).to_contain_text("Outdated", timeout=TIMEOUT)
    expect(stale).to_be_visible()
    pg.locator("#compare-button").click()  # compared again: no longer outdated
    expect(stale).not_to_contain_text("Outdated", timeout=TIMEOUT)
    expect(pg.locator("#compare-baseline")).to_contain_text("teapot", timeout=TIMEOUT)
    pg.close()
