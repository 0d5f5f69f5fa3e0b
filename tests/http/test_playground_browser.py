"""The playground in a real browser: Debian's chromium and chromium-driver, driven headless by selenium.

The page is loaded from a real server on the shipped repository (models/: default and shakespeare, as
`make serve` serves it); on the default model it streams a seeded generation that
must match the same request over gRPC, character by character and value by value; every character's
background must be the colour the terminal's `--watch` gives its unit's value (charrnn/client/heatmap.py),
and its text must contrast with that background as rendered by a WCAG ratio of 4.5 or more; Stop must
cancel the stream on the server; picking the other model in the picker must show that model's units and
stream its text. The screenshot goes to CHARRNN_SCREENSHOT_DIR when set (docs/img/ for the docs), else to
the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charrnn.client import Client
from charrnn.client.heatmap import contrast, rgb
from tests.http.conftest import base_url
from tests.observability.scrape import scrape
from tests.service.harness import REPO, ServerThread, make_config, wait_until

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="the browser test needs Debian's chromium and chromium-driver (apt-get install them)",
    ),
]

PROMPT = 'def describe(self):\n    return "'  # with seed 3: strings, a docstring, comments
UNIT = "c0:80"  # the default model's quote unit (its manifest lists it first)
CHARS = 400


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = make_config(None, model_repository=REPO / "models", http_port=0, metrics_port=0)
    with ServerThread(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,860"):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _metric(server: ServerThread, name: str, **labels: str) -> float:
    assert server.server is not None and server.server.metrics_http is not None
    samples = scrape(f"http://127.0.0.1:{server.server.metrics_http.port}/metrics")
    return samples.get((name, frozenset(labels.items())), 0.0)


def _fill(driver: Any, element_id: str, text: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    driver.execute_script("arguments[0].value = arguments[1];", field, text)


def parse_rgb(css: str) -> tuple[int, int, int]:
    """A computed colour, "rgb(r, g, b)" (opaque), as numbers."""
    r, g, b = (int(c) for c in re.findall(r"\d+", css)[:3])
    return r, g, b


# WCAG 2's minimum contrast for normal text (level AA); the map's worst case is 4.58.
MIN_CONTRAST = 4.5


def _open(driver: Any, server: ServerThread) -> None:
    driver.get(f"{base_url(server)}/")
    assert wait_until(lambda: driver.execute_script("return window.playground.model !== null"), 30)


def test_the_page_streams_the_seeded_text_coloured_by_the_unit(browser: Any, server: ServerThread) -> None:
    from selenium.webdriver.support.select import Select

    _open(browser, server)
    unit = Select(browser.find_element("id", "unit"))
    assert unit.options[0].get_attribute("value") == UNIT, "the manifest's interpretable units come first"
    assert "inside a string literal" in unit.options[0].text
    assert len(unit.options) == 5 + 2 * 2 * 256, "the interpretable units, then every h and c unit by index"
    unit.select_by_value(UNIT)
    _fill(browser, "prompt", PROMPT)
    _fill(browser, "temperature", "0.6")
    _fill(browser, "length", str(CHARS))
    _fill(browser, "seed", "3")
    browser.find_element("id", "generate").click()
    assert wait_until(lambda: browser.execute_script("return window.playground.finish") == "length", 60)

    text = browser.execute_script("return window.playground.text")
    values = browser.execute_script("return window.playground.values")
    with Client(server.target) as client:
        gen = client.generate(PROMPT, max_chars=CHARS, temperature=0.6, seed=3, watch=[("c", 0, 80)])
        assert text == gen.text(), "the page shows what the same seeded request over gRPC returns"
    assert values == pytest.approx([v for (v,) in gen.activations], abs=1e-5)

    spans = browser.execute_script(
        "return [...document.querySelectorAll('#output span[data-v]')].map(s => "
        "[Number(s.dataset.v), getComputedStyle(s).backgroundColor, getComputedStyle(s).color])"
    )
    assert len(spans) == len(text) == CHARS
    scale = max(abs(v) for v in values)  # a cell state's scale: the text's largest |value| (repainted as it grew)
    assert browser.execute_script("return window.playground.scale") == pytest.approx(scale)
    for (value, background, colour), expected in zip(spans, values, strict=True):
        got, want = parse_rgb(background), rgb(value, scale)
        assert value == pytest.approx(expected, abs=1e-9)
        assert all(abs(a - b) <= 1 for a, b in zip(got, want, strict=True)), (value, background, want)
        ratio = contrast(parse_rgb(colour), got)
        assert ratio >= MIN_CONTRAST, f"{colour} on {background} (value {value:+.3f}): contrast {ratio:.2f}"
    assert len({background for _, background, _ in spans}) > 20, "the colours vary with the unit"
    assert {parse_rgb(colour) for _, _, colour in spans} == {(0, 0, 0), (255, 255, 255)}, "both inks in use"
    points = browser.find_element("id", "spark").get_attribute("points").split()
    assert len(points) == CHARS

    shots = Path(os.environ.get("CHARRNN_SCREENSHOT_DIR") or browser.capabilities.get("tmp", "/tmp"))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "playground.png"))


def test_stop_cancels_the_stream_on_the_server(browser: Any, server: ServerThread) -> None:
    _open(browser, server)
    cancelled = _metric(server, "charrnn_streams_finished_total", model="default", reason="cancelled")
    _fill(browser, "length", "20000")
    _fill(browser, "seed", "")
    browser.find_element("id", "generate").click()
    assert wait_until(lambda: browser.execute_script("return window.playground.text.length") >= 200, 30)
    assert _metric(server, "charrnn_live_streams", model="default") == 1
    browser.find_element("id", "stop").click()
    assert wait_until(lambda: _metric(server, "charrnn_live_streams", model="default") == 0, 10)
    assert _metric(server, "charrnn_streams_finished_total", model="default", reason="cancelled") == cancelled + 1
    assert browser.execute_script("return window.playground.finish") == "stopped"
    assert "stopped after" in browser.find_element("id", "status").text


def test_the_picker_switches_the_model_its_units_and_its_text(browser: Any, server: ServerThread) -> None:
    from selenium.webdriver.support.select import Select

    _open(browser, server)
    picker = Select(browser.find_element("id", "model-picker"))
    assert [o.get_attribute("value") for o in picker.options] == ["default", "shakespeare"]
    assert picker.first_selected_option.text == "default (default)"
    picker.select_by_value("shakespeare")
    assert wait_until(lambda: browser.execute_script("return window.playground.model.id") == "shakespeare", 30)
    unit = Select(browser.find_element("id", "unit"))
    with Client(server.target) as client:
        info = client.info("shakespeare")
        annotated = len(json.loads((REPO / "models" / "shakespeare" / "manifest.json").read_text())["units"])
        assert len(unit.options) == annotated + 2 * info.layers * info.hidden_size, "the picked model's units"
        assert info.hidden_size != client.info().hidden_size
        unit.select_by_value("h1:300")  # only the wider model has it
        _fill(browser, "prompt", "ROMEO:\n")
        _fill(browser, "length", "200")
        _fill(browser, "seed", "5")
        browser.find_element("id", "generate").click()
        assert wait_until(lambda: browser.execute_script("return window.playground.finish") == "length", 60)
        text = browser.execute_script("return window.playground.text")
        gen = client.generate("ROMEO:\n", max_chars=200, temperature=0.6, seed=5, model="shakespeare")
        assert text == gen.text(), "the page streams the picked model's text"
        assert text != client.generate("ROMEO:\n", max_chars=200, temperature=0.6, seed=5).text()
    assert "shakespeare" in browser.find_element("id", "model").text
