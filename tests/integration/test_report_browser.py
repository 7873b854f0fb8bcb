"""report.html in a real browser: headless Chromium, driven through chromedriver, loads
every plot and the metadata of every WAV the page links to, and shows the figures.

Skipped where Chromium, chromedriver or selenium is missing; nothing leaves 127.0.0.1."""

from __future__ import annotations

import functools
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from browser_helpers import headless_chromium

from bayling_duplex.eval.listen import write_listening
from bayling_duplex.eval.metrics import EvalItem, judge, summarize
from bayling_duplex.eval.report import write_report
from bayling_duplex.format.interleave import ResponseEvent
from bayling_duplex.format.layout import BlockLayout

SR = 16000
L = BlockLayout(10, 5)


@pytest.fixture
def browser():
    driver = headless_chromium("--window-size=1100,900")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(tmp_path):
    """``(folder, base URL)``: ``tmp_path/report`` served on 127.0.0.1 from a thread."""
    root = tmp_path / "report"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _tone(text: str) -> np.ndarray:
    """A stand-in TTS: 0.8 s of a quiet tone per response."""
    t = np.arange(int(0.8 * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _dialogues(silent: bool = False):
    """Four judged dialogues, one per scenario, with their user waveforms (8 s each);
    ``silent``: as judged for a model that never answers."""
    specs = [
        (EvalItem("tt-<1>", "turn_taking", 100, ((5, 30),)), [(12, 20)]),
        (EvalItem("int-2", "interruption", 100, ((0, 18), (36, 55))), [(8, 20)]),
        (EvalItem("bc-3", "backchannel", 100, ((0, 20),), backchannel=(35, 40)), [(9, None)]),
        (EvalItem("hes-4", "hesitation", 100, ((0, 30),), pause=(10, 20)), []),
    ]
    rng = np.random.default_rng(0)
    items, outcomes = [], []
    for item, events in specs:
        evs = [] if silent else [ResponseEvent(s, e, (7,)) for s, e in events]
        o = judge(item, evs, lambda key, ids: False, L)
        o.extra = {
            "responses": [
                [
                    L.slot_start_s(e.speak_slot),
                    None if e.epad_slot is None else L.slot_start_s(e.epad_slot),
                    "an answer",
                ]
                for e in evs
            ]
        }
        wav = (0.05 * rng.standard_normal(round(item.num_frames * L.frame_s * SR))).astype(
            np.float32
        )
        items.append((item, wav))
        outcomes.append(o)
    return items, outcomes


def test_report_page_loads_images_and_audio_in_chromium(browser, served, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, base = served
    items, outcomes = _dialogues()
    listening = write_listening(
        root, items, outcomes, _tone, codes_audio=lambda i: np.zeros(SR // 2), n=4
    )
    _, mute = _dialogues(silent=True)
    reports = {"model": summarize(outcomes), "untrained": summarize(mute)}
    write_report(
        root, reports, {"model": outcomes, "untrained": mute}, items, L, 4, listening=listening
    )
    assert (root / "report.html").is_file()

    browser.get(f"{base}/report.html")
    state_js = """
        return {
          images: [...document.images].map(i => [i.getAttribute('src'), i.complete,
                                                   i.naturalWidth]),
          audio: [...document.querySelectorAll('audio')].map(a => [a.getAttribute('src'),
                  a.readyState, a.duration, a.error && a.error.code]),
        };"""

    def settled(driver):  # every image and every audio loaded or failed: fail fast
        s = driver.execute_script(state_js)
        images = all(done for _, done, _ in s["images"])
        audio = all(r >= 1 or err is not None for _, r, _, err in s["audio"])
        return s if images and audio else False

    try:
        state = WebDriverWait(browser, 20, poll_frequency=0.1).until(settled)
    except TimeoutException:
        pytest.fail(f"page not ready after 20 s: {browser.execute_script(state_js)}")

    assert sorted(src for src, _, _ in state["images"]) == ["latency.png", "timelines.png"]
    assert all(width > 0 for _, _, width in state["images"]), state["images"]
    assert all(r >= 1 and err is None for _, r, _, err in state["audio"]), state["audio"]
    expected = {d["wav"] for d in listening} | {d["codes_wav"] for d in listening}
    assert {src for src, *_ in state["audio"]} == expected and len(expected) == 8
    for src, _, duration, _ in state["audio"]:
        frames, sr = sf.info(root / src).frames, sf.info(root / src).samplerate
        assert duration == pytest.approx(frames / sr, abs=0.05), src

    def cell(row: str, col: int) -> str:
        xpath = f"//table[@class='metrics']//tr[th='{row}']/td[{col}]"
        return browser.find_element(By.XPATH, xpath).text

    header = browser.find_elements(By.XPATH, "//table[@class='metrics']/thead//th")
    assert [h.text for h in header] == ["metric", "model", "untrained"]
    assert reports["model"]["turn_taking"]["SR@3s"] == pytest.approx(2 / 3, abs=1e-4)
    # each figure with its bootstrap interval and its denominator
    assert cell("SR@3s", 1) == "66.7 % [0.0, 100.0] (n=3)"
    assert cell("SR@3s", 2) == "0.0 % [0.0, 0.0] (n=3)"
    assert re.fullmatch(r"0\.48 s \[0\.\d\d, 0\.\d\d\] \(2 of 3\)", cell("mean latency", 1))
    assert cell("mean latency", 2) == "–"
    assert "tt-<1>" in browser.find_element(By.TAG_NAME, "body").text  # escaped, shown as text

    chrome, height = browser.execute_script(
        "return [window.outerHeight - window.innerHeight, document.documentElement.scrollHeight]"
    )
    browser.set_window_size(1100, min(int(chrome) + int(height) + 20, 6000))  # the whole page
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
