"""The demo page (GET /) in a real browser: headless Chromium, driven by Selenium through Debian's
chromedriver, against `python -m server` on the tiny bundles. It submits both forms and reads
what the page renders, as a visitor would see it; streamed generation must show words while
they arrive, not only at the end.

The screenshot in docs/ comes from the same test over the shipped models:
    DEMO_PAGE_MODEL_DIR=models DEMO_PAGE_SCREENSHOT=docs/demo-page.png \
        .venv/bin/python -m pytest -q tests/test_server_demo_page.py -k renders
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_harness import RunningServer, bundle_copy, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium on a closed network (docs: env machines): no sandbox as root, no GPU, and none of the
# background connections it would otherwise try (and be refused) at every start.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,1400",
)
WAIT_S = 30

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) missing")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them)",
        allow_module_level=True,
    )

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.expected_conditions import staleness_of  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _serve(model_dir: Path, log_dir: Path, **env: str) -> Iterator[RunningServer]:
    server = start_server(model_dir, log_dir, **env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tiny_bundles: Path, tmp_path: Path) -> Iterator[RunningServer]:
    model_dir = Path(os.environ.get("DEMO_PAGE_MODEL_DIR") or tiny_bundles)
    yield from _serve(model_dir, tmp_path / "logs")


@pytest.fixture
def several_models(tiny_bundles: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """Two single-label classifiers, a multi-label one and two language models."""
    root = tmp_path / "models"
    bundle_copy(tiny_bundles / "imdb-sentiment", root)
    bundle_copy(tiny_bundles / "imdb-sentiment", root, name="sentiment-b", version="b")
    bundle_copy(tiny_bundles / "imdb-sentiment", root, name="tags", multi_label=True, threshold=0.3)
    bundle_copy(tiny_bundles / "imdb-lm", root)
    bundle_copy(tiny_bundles / "imdb-lm", root, name="lm-b", version="b")
    yield from _serve(
        root, tmp_path / "logs", DEFAULT_CLASSIFIER="imdb-sentiment", DEFAULT_LM="imdb-lm"
    )


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def _classify(driver: Any, text: str) -> tuple[str, str]:
    """Type a review, submit, and return (verdict shown, model shown)."""
    box = driver.find_element(By.CSS_SELECTOR, "#classify-form textarea[name=text]")
    box.clear()
    box.send_keys(text)
    previous = driver.find_elements(By.ID, "classify-model-used")
    driver.find_element(By.CSS_SELECTOR, "#classify-form button").click()
    if previous:  # the answer to this submission, not the last one
        WebDriverWait(driver, WAIT_S).until(staleness_of(previous[0]))
    model = _wait(driver, "#classify-out #classify-model-used")
    return driver.find_element(By.ID, "classify-label").text, model.text


# Records what the generate output shows after each change, with the time and whether the
# stream's `done` had arrived: proof that words appear while they stream in.
WATCH_GROWTH = """
window.growth = [];
const out = document.getElementById('generate-out');
new MutationObserver(() => {
  const words = document.getElementById('generate-words-out');
  const status = document.getElementById('generate-status');
  if (words) window.growth.push([performance.now(), words.textContent.length,
                                 Boolean(status && status.dataset.done)]);
}).observe(out, {subtree: true, childList: true, characterData: true});
"""


def test_demo_page_renders_classification_and_streamed_generation(
    browser: Any, server: RunningServer
) -> None:
    browser.get(server.url("/"))
    assert "ULMFiT" in browser.title
    demo = browser.find_elements(By.CSS_SELECTOR, "section ol li")
    assert len(demo) == 5 and all(li.text.startswith("My favorite part was when") for li in demo)
    # one model per task: no selector shown (and none sent)
    assert not browser.find_element(By.ID, "classify-model-row").is_displayed()

    review = "A wonderful, moving film. The acting was superb and I loved every scene."
    label, model = _classify(browser, review)
    api = requests.post(server.url("/classify"), json={"text": review}, timeout=30).json()
    assert label == api["label"] and model == api["model"]
    shown = {row.text for row in browser.find_elements(By.CSS_SELECTOR, "#classify-out .bars .num")}
    assert shown == {f"{100 * p:.1f} %" for p in api["probabilities"].values()}

    browser.execute_script(WATCH_GROWTH)
    target = os.environ.get("DEMO_PAGE_SCREENSHOT")
    words = browser.find_element(By.ID, "generate-words")
    words.clear()
    # the tiny LM streams 200 words in ~50 ms, still many reads; a screenshot wants a paragraph
    words.send_keys("60" if target else "200")
    browser.find_element(By.CSS_SELECTOR, "#generate-form button").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.ID, "generate-status").get_attribute("data-done")
    )
    text = browser.find_element(By.ID, "generate-text").text
    assert text.startswith("My favorite part was when") and len(text.split()) > 20, text
    status = browser.find_element(By.ID, "generate-status").text
    match = re.fullmatch(r"(\d+) words in [\d.]+ s · (\S+)", status)
    assert match and int(match[1]) > 20 and match[2].startswith("imdb-lm@"), status
    growth = browser.execute_script("return window.growth")
    final = max(length for _, length, _ in growth)
    partial = {length for _, length, done in growth if not done and 0 < length < final}
    assert len(partial) >= 3, growth  # the text grew in steps while the stream was open

    if target:  # docs/demo-page.png: the whole page, with these results on it
        shot = browser.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        Path(target).write_bytes(base64.b64decode(shot["data"]))


def test_demo_page_shows_an_api_error_in_words(browser: Any, server: RunningServer) -> None:
    browser.get(server.url("/"))
    words = browser.find_element(By.ID, "generate-words")
    words.clear()
    words.send_keys("100000")  # over MAX_N_WORDS: the server answers 422 before streaming
    browser.find_element(By.CSS_SELECTOR, "#generate-form button").click()
    error = _wait(browser, "#generate-out .error")
    assert "n_words" in error.text and "Traceback" not in error.text


def _choose(driver: Any, task: str, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{task}-model option[value='{name}']").click()


def test_demo_page_model_selectors_send_the_chosen_model(
    browser: Any, several_models: RunningServer
) -> None:
    browser.get(several_models.url("/"))
    _wait(browser, "#classify-model-row:not([hidden])")
    _wait(browser, "#generate-model-row:not([hidden])")
    listed = {
        task: sorted(
            o.get_attribute("value")
            for o in browser.find_elements(By.CSS_SELECTOR, f"#{task}-model option")
        )
        for task in ("classify", "generate")
    }
    assert listed == {
        "classify": ["imdb-sentiment", "sentiment-b", "tags"],
        "generate": ["imdb-lm", "lm-b"],
    }
    review = "Dreadful and boring, a waste of two hours."
    _choose(browser, "classify", "sentiment-b")
    label, model = _classify(browser, review)
    assert model == "sentiment-b@b" and label in ("neg", "pos")
    _choose(browser, "classify", "imdb-sentiment")
    assert _classify(browser, review)[1].startswith("imdb-sentiment@")

    # multi-label: the page lists every label over the threshold, as the API answers
    _choose(browser, "classify", "tags")
    box = browser.find_element(By.CSS_SELECTOR, "#classify-form textarea[name=text]")
    box.clear()
    box.send_keys(review)
    browser.find_element(By.CSS_SELECTOR, "#classify-form button").click()
    _wait(browser, "#classify-labels")
    api = requests.post(
        several_models.url("/classify"), json={"text": review, "model": "tags"}, timeout=30
    ).json()
    shown = [
        chip.text for chip in browser.find_elements(By.CSS_SELECTOR, "#classify-labels .verdict")
    ]
    assert shown == api["labels"]
    assert f"threshold {api['threshold']}" in browser.find_element(By.ID, "classify-out").text
    assert browser.find_element(By.ID, "classify-model-used").text == api["model"]

    _choose(browser, "generate", "lm-b")
    browser.find_element(By.CSS_SELECTOR, "#generate-form button").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.ID, "generate-status").get_attribute("data-done")
    )
    assert browser.find_element(By.ID, "generate-status").text.endswith("· lm-b@b")
