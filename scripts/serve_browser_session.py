"""Record a browser session with the live server: headless Chromium, a fake microphone
playing a WAV once, the page's timeline as a screenshot and its state as JSON.

    python -m bayling_duplex.serve checkpoint=runs/sft/default/final &
    python scripts/serve_browser_session.py --url http://127.0.0.1:8765 \\
        --wav question.wav --seconds 8 --out /tmp/browser-session

Needs Chromium and chromedriver (``apt-get install -y chromium chromium-driver``) and
selenium (the dev extra). Writes ``timeline.png`` and ``page_state.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8765", help="the server's page")
    p.add_argument("--wav", required=True, help="what the fake microphone says (16-bit PCM WAV)")
    p.add_argument("--seconds", type=float, default=8.0, help="microphone audio to send, then end")
    p.add_argument("--out", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={Path(args.wav).resolve()}%noloop",
        "--window-size=1150,820",
    ):
        opts.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(f"{args.url}/?autostart=1&seconds={args.seconds}")
        WebDriverWait(driver, args.seconds + 30, poll_frequency=0.2).until(
            lambda d: d.execute_script("return window.duplex.done || window.duplex.error")
        )
        state = driver.execute_script("return window.duplex")
        driver.save_screenshot(str(out / "timeline.png"))
    finally:
        driver.quit()
    (out / "page_state.json").write_text(json.dumps(state, indent=1) + "\n")
    print(json.dumps({k: state[k] for k in ("done", "error", "blocks", "responses")}, indent=1))


if __name__ == "__main__":
    main()
