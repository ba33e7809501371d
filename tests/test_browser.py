"""A person's path through the launched app, in headless Chromium: upload a picture, get labels
from every image model, run a small sweep in the Scaling lab and see its plot.

Uses Debian's ``chromium`` (installed by ``.ci/run``) through Playwright's ``executable_path``;
Playwright's own browser download is not used. Screenshots go to ``$EFFVIZ_SCREENSHOT_DIR``
(default ``test-artifacts/browser/``): the README's screenshots come from this test.
"""
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from effviz import api

from .conftest import REPO, STARTUP_TIMEOUT_S

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("EFFVIZ_SCREENSHOT_DIR") or REPO / "test-artifacts" / "browser")
UI_TIMEOUT_MS = 120_000

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian's chromium for the browser test (see .ci/run)")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium"),
    pytest.mark.timeout(STARTUP_TIMEOUT_S + 400),
]


@pytest.fixture(scope="module")
def playwright():
    """One Playwright for the module: its sync API refuses to start while another one runs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def page(app, playwright):
    url, _, _ = app
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.goto(url)
        yield tab
    finally:
        browser.close()


def _wait_for_text(page, selector: str, text: str) -> None:
    """Until the element's rendered text contains ``text`` (Gradio's tables keep hidden copies of
    their cells, so visibility of one cell says nothing)."""
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text], timeout=UI_TIMEOUT_MS,
    )


def _photo(path: Path) -> Path:
    """scikit-image's bundled cat photo (offline; labels are checked against each model's label
    set, not for being right)."""
    from skimage import data

    Image.fromarray(data.chelsea()).save(path)
    return path


def test_upload_a_picture_and_get_labels_from_every_image_model(page, tmp_path):
    page.locator("#vision-image input[type=file]").set_input_files(str(_photo(tmp_path / "cat.png")))
    page.locator("#vision-image img").first.wait_for()  # the upload is shown before we classify
    page.locator("#vision-classify").click()
    models = api.list_models("image")
    if not models:
        page.get_by_text("No bundled model for this task yet").first.wait_for()
        return
    for model_id in models:
        _wait_for_text(page, "#vision-table", model_id)
    labels = page.locator(".vision-label")
    assert labels.count() == len(models)
    for i, model_id in enumerate(models):
        known = set(api.load_model(model_id).config.labels)
        shown = labels.nth(i).inner_text()
        assert any(label in shown for label in known), f"{model_id} shows no label of its own: {shown!r}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "vision.png"), full_page=True)


def test_run_a_small_sweep_and_see_the_plot(page):
    page.get_by_role("tab", name="Scaling lab").click()
    values = page.locator("#sweep-values textarea")
    values.fill("64, 128, 256")  # 3 sizes over 15x in tokens: enough for an exponent, in about a minute
    page.locator("#sweep-run").click()
    # The three default models at three sizes: nine rows in the raw-points table, and curves in the plot.
    _wait_for_text(page, "body", "Done: 9 points in ")
    for model_id in ("vim-tiny", "deit-tiny", "deit-tiny-eager"):
        _wait_for_text(page, "#sweep-table", model_id)
    assert page.locator("#sweep-table").inner_text().count("128 px") == 3
    assert "a fit needs" not in page.locator("body").inner_text()  # every model has its exponent
    plot = page.locator("#sweep-latency .js-plotly-plot")
    plot.wait_for()
    assert page.locator("#sweep-latency .scatterlayer .trace").count() >= 2  # one curve per model
    assert "ok" in page.locator("#sweep-table").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "scaling-lab.png"), full_page=True)


def test_look_inside_the_models_on_a_photo(page, tmp_path):
    page.get_by_role("tab", name="Inside the models").click()
    page.locator("#inside-image input[type=file]").set_input_files(str(_photo(tmp_path / "cat.png")))
    page.locator("#inside-image img").first.wait_for()
    page.locator("#inside-run").click()
    if not api.list_models("image"):
        return
    _wait_for_text(page, "body", "predicts")
    for plot in ("#inside-relevance", "#inside-matrices", "#inside-receptive"):
        page.locator(f"{plot} .js-plotly-plot").wait_for()
    assert page.locator("#inside-relevance .heatmaplayer, #inside-relevance image").count() >= 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "inside.png"), full_page=True)


# ---- Live digits: a tiny random transcriber in an app of its own -----------------------------------

# Digits in the table's transcript cell, the one after the mixer's name (3 or more: no other cell of the
# row is a whole number that large before 100 s of audio).
DIGITS_SHOWN = """() => {
    const cells = (document.querySelector('#live-table')?.innerText || '').split('\\n').map(c => c.trim());
    return cells.some((cell, i) => cell === 'attention' && /^[0-9]{3,}$/.test(cells[i + 1] || ''));
}"""


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    """The app with one tiny random transformer transcriber (the one that streams before the
    stateful kernels are merged) as its only saved model: (url, model, phone-number WAV)."""
    from effviz import train_transcriber
    from effviz.ui.examples import prepare_examples
    from tests.test_streaming import tiny_card, tiny_model

    from .conftest import _free_port, launched_app

    weights = tmp_path_factory.mktemp("weights")
    model = tiny_model("transformer-digits-stream", seed=0)
    card = tiny_card("tiny", "attention")
    train_transcriber.save_transcriber(model, card, weights / "transcribers" / "tiny-transformer-stream")
    number = prepare_examples(tmp_path_factory.mktemp("examples")).spoken_number
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(_free_port()),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "EFFVIZ_WEIGHTS_DIR": str(weights), "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
    with launched_app(env, tmp_path_factory.mktemp("live-app") / "app.log") as (url, _, _):
        yield url, model, number


def _live_tab(playwright, url: str, *args: str):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *args])
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.set_default_timeout(UI_TIMEOUT_MS)
    tab.goto(url)
    tab.get_by_role("tab", name="Live digits").click()
    return browser, tab


def test_stream_a_recording_and_see_the_offline_digits_appear(live_app, playwright):
    from effviz import streaming

    url, model, number = live_app
    offline = streaming.digits_text(streaming.transcribe_waveform(model, streaming.recording(number, None, model.config)))
    assert offline, "the tiny model says some digits on the phone number"
    browser, tab = _live_tab(playwright, url)
    try:
        tab.locator("#live-recording input[type=file]").set_input_files(number)
        tab.locator("#live-recording audio, #live-recording .waveform-container").first.wait_for(state="attached")
        tab.locator("#live-run").click()
        _wait_for_text(tab, "#live-status", "Done:")
        _wait_for_text(tab, "#live-table", offline)
        tab.locator("#live-plot .js-plotly-plot").wait_for()
        assert tab.locator("#live-plot .scatterlayer .trace").count() == 2  # compute and state, one model
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "live-digits.png"), full_page=True)
    finally:
        browser.close()


def test_speak_into_the_microphone_and_see_digits_appear(live_app, playwright):
    """Chromium's fake microphone plays the phone number (in a loop, from wherever it is when the
    recording starts, at the browser's rate): what the model hears is not known here, so the test
    sees digits appear as the stream goes on, not which."""
    url, _, number = live_app
    browser, tab = _live_tab(playwright, url, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                             f"--use-file-for-fake-audio-capture={number}")
    try:
        tab.locator("#live-mic").get_by_role("button", name="Record").click()
        _wait_for_text(tab, "#live-status", "Listening:")
        tab.wait_for_function(DIGITS_SHOWN, timeout=UI_TIMEOUT_MS)
        tab.locator("#live-plot .js-plotly-plot").wait_for()
    finally:
        browser.close()
