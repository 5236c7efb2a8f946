"""Headless Chromium for the page tests: where chromium and chromedriver are, and a Selenium driver on them.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
MISSING = ("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver; "
           "scripts/install.sh --test installs them)")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


@contextmanager
def headless_chrome(*flags: str, prefs: dict[str, Any] | None = None) -> Iterator[Any]:
    """A Selenium Chrome driver on headless Chromium (``FLAGS`` plus ``flags``, ``prefs`` as its preferences),
    quit on leaving; the test is skipped where chromium or chromedriver is missing."""
    if CHROMEDRIVER is None or CHROMIUM is None:
        pytest.skip(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, *flags):
        options.add_argument(flag)
    if prefs:
        options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
