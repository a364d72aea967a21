"""The published site, opened in a real headless Chromium from file://.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright with `executable_path`; no
browser is downloaded. Without it these tests skip with the reason, unless SYNAPSEBENCH_REQUIRE_BROWSER
is set (CI sets it, so CI never skips them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmark import store, train
from benchmark.cli import main
from tests.helpers import make_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = bool(os.environ.get("SYNAPSEBENCH_REQUIRE_BROWSER"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rules, two learning rates each, two seeds, on one task: a small stored suite."""
    folder = tmp_path_factory.mktemp("results")
    for rule, rates in (("sgd", (0.05, 0.2)), ("adamw", (1e-3, 1e-2))):
        for lr in rates:
            for seed in (0, 1):
                spec = make_spec(
                    rule=rule, seed=seed, steps=20, eval_every=5, suite="site", hparams={"lr": lr}
                )
                store.write_run(folder, spec, train.run(spec))
    return folder


@pytest.fixture(scope="module")
def site(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert main(["publish", "site", "--results", str(results), "--out", str(out)]) == 0
    return out


def test_publish_writes_an_index_and_a_page_per_suite(site: Path) -> None:
    assert sorted(p.name for p in site.glob("*.html")) == ["index.html", "site.html"]
    page = (site / "site.html").read_text()
    assert "<svg" in page
    for link in ('src="http', "src='http", 'href="http', "href='http", "url(http", "@import"):
        assert link not in page  # nothing is fetched from the network


def test_an_unknown_suite_is_refused_with_a_suggestion(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", "sight", "--results", str(results), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'site'" in err
    assert str(results) in err
    assert not (tmp_path / "out").exists()


def test_a_suite_without_runs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["publish", "empty", "--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="Debian's chromium is not installed")
def test_the_pages_work_in_a_headless_browser(site: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    assert CHROMIUM is not None, "SYNAPSEBENCH_REQUIRE_BROWSER is set but chromium is not installed"
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for name in ("index.html", "site.html"):
            page.goto((site / name).as_uri())
            page.wait_for_load_state("load")
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            for table in page.locator("table.sortable").all():
                headers = table.locator("thead th")
                for i in range(headers.count()):
                    cells = table.locator(f"tbody tr td:nth-child({i + 1})")
                    headers.nth(i).click()
                    first = cells.evaluate_all("cells => cells.map(c => c.dataset.sort)")
                    assert first == _sorted(first), (name, i, first)
                    headers.nth(i).click()
                    again = cells.evaluate_all("cells => cells.map(c => c.dataset.sort)")
                    assert again == _sorted(first, reverse=True), (name, i)
            for svg in page.locator("svg").all():
                box = svg.bounding_box()
                assert box is not None
                assert min(box["width"], box["height"]) > 50
                assert svg.locator("path").count() > 0
        page.goto((site / "site.html").as_uri())
        shot = site / "site.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def _sorted(keys: list[str], reverse: bool = False) -> list[str]:
    """The order the page's script gives: numbers as numbers, missing values last either way."""
    present = [k for k in keys if k != ""]
    try:
        ordered = sorted(present, key=float, reverse=reverse)
    except ValueError:
        ordered = sorted(present, reverse=reverse)
    return ordered + [k for k in keys if k == ""]
