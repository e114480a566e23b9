"""A headless Chromium for the browser tests: Playwright for Python driving Debian's ``chromium``.

Playwright's own browser download cannot work on machines that reach only the package registries,
so the tests point Playwright at the system browser (``executable_path``). ``.ci/run`` installs the
``chromium`` package and the ``playwright`` Python package, so in CI (``CI=1``) these tests run and
never skip: :func:`chromium` fails there instead of skipping when either is missing.

    with chromium() as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8000/")
"""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

# What a closed network needs: no background connections, no first-run or component downloads.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """The system Chromium (``$CHROMIUM`` first), or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what}: .ci/run installs it, so CI must not skip the browser tests")
    pytest.skip(f"{what} (install: apt-get install chromium; pip install -e '.[dev]')")


@contextlib.contextmanager
def chromium():
    """A headless Chromium browser (playwright.sync_api.Browser) with a fresh profile, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional test dependency
    except ImportError:
        _missing("the playwright Python package is not installed")
    path = chromium_path()
    if path is None:
        _missing("no chromium on PATH")
    with sync_playwright() as pw:  # Playwright gives each launch a fresh temporary profile
        browser = pw.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
