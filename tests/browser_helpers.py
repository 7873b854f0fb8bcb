"""A headless Chromium driven by WebDriver, or a clean skip where it is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium chromium-driver"
BASE_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
)


def headless_chromium(*args: str, page_load_timeout_s: float = 20):
    """A WebDriver session of headless Chromium with ``BASE_ARGS`` and ``args``; skips the
    test (saying how to install them) where Chromium, chromedriver or selenium is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (install it with: {INSTALL})")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).is_file():
        pytest.skip(f"chromedriver is not installed (install it with: {INSTALL})")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed (pip install selenium; and {INSTALL})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (*BASE_ARGS, *args):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(page_load_timeout_s)
    return driver
