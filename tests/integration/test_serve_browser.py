"""The live page in a real headless Chromium: a fake microphone fed from a WAV talks to the
server, the page plays the assistant's audio and draws who speaks when.

Skipped where Chromium, chromedriver or selenium is missing (install them with
``apt-get install -y chromium chromium-driver``); nothing leaves 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("uvicorn")

from browser_helpers import headless_chromium
from serve_helpers import (
    running_server,
    serve_conf,
    talkative_engine,
    tiny_speech_checkpoint,
    user_audio,
)


def chrome(wav: Path):
    """A headless Chromium whose microphone plays ``wav`` once (WebDriver), or a skip."""
    return headless_chromium(
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--window-size=1150,820",
    )


def test_the_page_talks_through_a_fake_microphone(tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    pytest.importorskip("espeakng_loader")
    torch.set_num_threads(1)
    final = tiny_speech_checkpoint(tmp_path / "ckpt")
    wav = tmp_path / "mic.wav"
    sf.write(
        wav,
        np.concatenate([user_audio(3.0, 10), np.zeros(16000, np.float32)]),
        16000,
        subtype="PCM_16",
    )
    engine = talkative_engine(final, voice="tts")
    driver = chrome(wav)
    try:
        with running_server(serve_conf(final, audio="tts"), engine) as (_, base, _, _):
            driver.get(f"{base}/?autostart=1&seconds=4.8")
            try:
                WebDriverWait(driver, 40, poll_frequency=0.2).until(
                    lambda d: d.execute_script("return window.duplex.done || window.duplex.error")
                )
            except TimeoutException:
                pytest.fail(f"no end of session: {driver.execute_script('return window.duplex')}")
            state = driver.execute_script("return window.duplex")
            assert state["error"] is None, state["error"]
            assert state["done"]["reason"] == "end_of_input" and state["closeCode"] == 1000
            assert state["blocks"] == 6 and state["audioBlocks"] == 6  # 4.8 s of microphone
            frames = np.asarray(state["userFrames"])
            assert len(frames) == 60 and (frames > 0.01).sum() > 10  # the WAV reached the page
            assert state["ready"]["sample_rate"] == 16000 and state["ready"]["audio"] == "tts"
            assert "done" in driver.find_element("id", "status").text
            shot = tmp_path / "page.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    finally:
        driver.quit()
