"""Headless Chromium for the web console's browser tests (issue 17, docs/console.md).

``tests/conftest.py``'s ``browser`` fixture starts one ``Browser`` per test module: Debian's
``chromium`` driven by selenium through Debian's ``chromedriver`` (never a driver selenium would
download), ``--headless=new``, a fixed window size, a throwaway profile directory, and no network
beyond loopback (every other address goes to a proxy that does not exist, every other host name
resolves to nothing). ``--no-sandbox`` only when running as root, where Chromium's sandbox cannot
start.

``binaries()`` finds the two programs and selenium; ``Unavailable`` says which is missing (the
fixture skips saying so, or fails with ``LIFELONG_REQUIRE_BROWSER=1``, as CI sets).

Tests wait with ``Browser.wait`` (selenium's ``WebDriverWait`` with a deadline and a message
naming what was awaited), never with fixed sleeps. ``Browser.screenshot(name)`` saves
``NAME.png`` into ``LIFELONG_CONSOLE_SHOTS`` (default: a tmp dir of the test session);
``make screenshots`` points it at ``docs/console/``. chromedriver runs in its own process group
with Chromium under it, registered with ``harness/reaper.py``: a session that ends without
``quit()`` still leaves no browser behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from harness import reaper

T = TypeVar("T")

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
WINDOW = (1280, 900)
MAX_SHOT_HEIGHT = 1800  # a screenshot is the page as tall as its content, up to this
DEAD_PROXY = "127.0.0.1:9"  # the discard port: nothing listens, so nothing leaves through it
SHOTS_ENV = "LIFELONG_CONSOLE_SHOTS"
REQUIRE_ENV = "LIFELONG_REQUIRE_BROWSER"


class Unavailable(Exception):
    """Chromium, chromedriver or selenium is missing (the message says which and how to get it)."""


def _which(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name) if "/" not in name else (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver), both executable, with selenium importable; else ``Unavailable``."""
    chromium, driver = _which(CHROMIUM), _which(CHROMEDRIVER)
    missing = []
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip install -e '.[test]')")
    if missing or chromium is None or driver is None:
        raise Unavailable("missing " + ", ".join(missing))
    return chromium, driver


def chromium_arguments(profile: Path) -> list[str]:
    """The command-line switches of the test browser (see the module docstring)."""
    args = [
        "--headless=new",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        f"--proxy-server={DEAD_PROXY}",  # loopback bypasses a proxy by default: only it is reached
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-dev-shm-usage",  # containers' /dev/shm is often 64 MB
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--lang=en-US",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to start as root
    return args


class Browser:
    """One headless Chromium session; ``driver`` is selenium's ``WebDriver``."""

    def __init__(self, driver: Any, shots: Path, timeout: float = 15.0) -> None:
        self.driver = driver
        self.shots = shots
        self.timeout = timeout
        self.base = ""  # the server the test's paths are on (``show`` of the console's tests)

    def keep_on_load(self, name: str, css: str) -> None:
        """From now on every document records, once loaded, the text of its first ``css`` element
        (or null) in ``window[name]`` (Chromium's ``Page.addScriptToEvaluateOnNewDocument``): what
        a page showed when it came, even after its script has changed it."""
        source = (
            "document.addEventListener('DOMContentLoaded', function () {"
            f" var e = document.querySelector({json.dumps(css)});"
            f" window[{json.dumps(name)}] = e ? e.textContent : null; }});"
        )
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    # -- waiting --------------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """Poll ``predicate`` (every 0.1 s, selenium's ``WebDriverWait``) until it is truthy and
        return its value; a ``TimeoutException`` naming ``what`` (and the page) at the deadline.
        A page swapped in while the predicate reads it (a stale element) is polled again."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        limit = self.timeout if timeout is None else timeout
        waiter = WebDriverWait(
            self.driver, limit, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        try:
            return waiter.until(lambda _driver: predicate())
        except TimeoutException:
            raise TimeoutException(
                f"timed out after {limit:.1f}s waiting for {what} on {self.driver.current_url}"
            ) from None

    # -- pages ----------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> Any:
        """The first element matching ``css`` (waited for)."""
        from selenium.webdriver.common.by import By

        return self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, css)[:1], f"an element {css}")[0]

    def click(self, css: str) -> None:
        """Click the first element matching ``css``; one a live update swaps out between the
        finding and the click is found again and clicked (until the deadline)."""
        from selenium.webdriver.common.by import By

        def find_and_click() -> bool:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            if not found:
                return False
            found[0].click()
            return True

        self.wait(find_and_click, f"an element {css} clicked")

    def submit(self, form_css: str, field: str, value: str) -> None:
        """Type ``value`` into the form's input ``field`` and click its submit button. A live
        update may swap the form for a new copy between the finding and the click (a stale
        element), or have it not interactable yet while it lays the page out: it is found again,
        filled and clicked, until the deadline."""
        from selenium.common.exceptions import ElementNotInteractableException
        from selenium.webdriver.common.by import By

        def fill_and_click() -> bool:
            forms = self.driver.find_elements(By.CSS_SELECTOR, form_css)
            if not forms:
                return False
            try:
                field_input = forms[0].find_element(By.CSS_SELECTOR, f'input[name="{field}"]')
                field_input.clear()
                field_input.send_keys(value)
                forms[0].find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
            except ElementNotInteractableException:
                return False
            return True

        self.wait(fill_and_click, f"the form {form_css} submitted")

    def all(self, css: str) -> list[Any]:
        """Every element matching ``css`` now (no wait)."""
        from selenium.webdriver.common.by import By

        found: list[Any] = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found

    def has(self, css: str) -> bool:
        return bool(self.all(css))

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def path(self) -> str:
        """The current URL's path and query."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.driver.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def mark(self) -> None:
        """Put a marker on this document's ``window``: ``reloaded()`` is true once it is gone,
        i.e. the page was loaded again (the way to tell a live update from a reload)."""
        self.script("window.__lifelongMark = true;")

    def reloaded(self) -> bool:
        return not self.script("return window.__lifelongMark === true;")

    def screenshot(self, name: str, tall: bool = True) -> Path:
        """Save the page as ``NAME.png`` in the shots directory: as tall as its content (up to
        ``MAX_SHOT_HEIGHT``), or with ``tall=False`` what the window shows."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        if tall:  # the window's height is the page's plus what the browser's frame takes
            content, frame = self.script(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];"
            )
            height = min(max(int(content), WINDOW[1]), MAX_SHOT_HEIGHT) + max(int(frame), 0)
            self.driver.set_window_size(WINDOW[0], height)
        try:
            if not self.driver.save_screenshot(str(path)):
                raise AssertionError(f"chromium saved no screenshot to {path}")
        finally:
            self.driver.set_window_size(*WINDOW)
        return path


def shots_dir(default: Path) -> Path:
    """``LIFELONG_CONSOLE_SHOTS`` (relative to the repository root) or ``default``."""
    value = os.environ.get(SHOTS_ENV)
    if not value:
        return default
    path = Path(value)
    return path if path.is_absolute() else Path(__file__).resolve().parents[2] / path


@contextlib.contextmanager
def running_browser(workdir: Path, shots: Path) -> Iterator[Browser]:
    """Start Chromium (its profile and chromedriver's log in ``workdir``), yield it, quit it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = chromium
    for arg in chromium_arguments(workdir / "profile"):
        options.add_argument(arg)
    options.page_load_strategy = "normal"
    service = Service(
        executable_path=driver_path,
        log_output=str(workdir / "chromedriver.log"),
        popen_kw={"start_new_session": True},  # its own group, Chromium in it: the reaper's to kill
    )
    driver = webdriver.Chrome(service=service, options=options)
    if service.process is not None:
        reaper.started(service.process)
    try:
        driver.set_page_load_timeout(30)
        driver.set_window_size(*WINDOW)
        yield Browser(driver, shots)
    finally:
        driver.quit()
