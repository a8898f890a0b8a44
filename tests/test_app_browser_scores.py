"""The score view in a real browser (Debian's chromium, Playwright) against the app launched
in-process on the tiny open_clip ViT: choosing "score" draws the score map and a colour bar
whose label is the method's score (from the registry), in the light and dark themes, on a bright
and a dark photo. Screenshots go to artifacts/ (look at them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

from tca.methods import METHODS  # noqa: E402
from tests.test_app_browser16 import TIMEOUT, _open, browser, url  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dark_photo(tmp_path_factory) -> Path:
    """A night version of a bundled photo (a fifth of its brightness)."""
    img = np.asarray(Image.open(ROOT / "assets" / "astronaut.jpg").convert("RGB"), dtype=np.float32)
    path = tmp_path_factory.mktemp("dark") / "night.png"
    Image.fromarray((img * 0.2).round().astype(np.uint8)).save(path)
    return path


def _run_method(pg, method: str) -> None:
    m = METHODS[method]
    pg.get_by_text(m.label, exact=True).click()
    pg.locator("#run-button").click()
    expect(pg.locator("#condensed-label")).to_contain_text(
        f"Condensed: {m.title},", timeout=TIMEOUT
    )
    expect(pg.locator("#stale-notice")).not_to_contain_text("Outdated", timeout=TIMEOUT)


@pytest.mark.parametrize(
    "theme, photo, method",
    [
        ("light", "bright", "pitome"),
        ("dark", "dark", "zero-tprune"),
        ("dark", "bright", "tome"),
        ("light", "dark", "repshift"),
    ],
)
def test_score_view_names_the_methods_score(
    browser,  # noqa: F811
    url,  # noqa: F811
    dark_photo,
    artifacts_dir,
    theme,
    photo,
    method,
):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(pg, url + ("?__theme=dark" if theme == "dark" else ""))
    if photo == "dark":
        pg.locator("#image-input input[type=file]").set_input_files(str(dark_photo))
        expect(pg.locator("#stale-notice")).to_contain_text("Outdated", timeout=TIMEOUT)
    _run_method(pg, method)
    before = pg.locator("#layer-map img").get_attribute("src")
    pg.get_by_text("score the method ranks by (colour scale)").click()
    bar = pg.locator("#layer-info .tca-colorbar")
    expect(bar).to_be_visible(timeout=TIMEOUT)
    name = METHODS[method].score.name
    expect(bar.locator(".cb-label")).to_have_text(name)
    expect(bar).to_contain_text(f"{name} at block 9")  # the last block shows block 9's ranking
    expect(pg.locator("#layer-map img")).not_to_have_attribute("src", before or "", timeout=TIMEOUT)
    # the legend names the high-norm mark and its rule
    expect(pg.locator("#legend")).to_contain_text("high-norm token")
    pg.locator("#layer-map").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts_dir / f"score-view-{method}-{theme}-{photo}.png"))
    pg.evaluate("document.querySelector('#layer-info').scrollIntoView({block: 'end'})")
    pg.screenshot(path=str(artifacts_dir / f"score-bar-{method}-{theme}-{photo}.png"))
    # back to the fates: the colour bar goes
    pg.get_by_text("fates (kept / merged groups / pruned)").click()
    expect(pg.locator("#layer-info .tca-colorbar")).to_have_count(0, timeout=TIMEOUT)
    pg.close()
