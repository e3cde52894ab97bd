"""The test browser itself (``tests/harness/browser.py``): headless Chromium driven by selenium
through Debian's chromedriver loads a page from a real HTTP server on loopback, waits on what its
script changes (no fixed sleep), saves a screenshot, and reaches nothing beyond loopback: a server
of this machine on a non-loopback address answers Python but not the browser, and host names do
not resolve. The web console's tests (tests/e2e/test_console_browser.py) rely on all of that.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness.browser import WINDOW, Browser

PAGE = b"""<!doctype html><html><head><title>harness</title></head><body>
<p id="state" data-state="waiting">waiting</p>
<script>setTimeout(function () {
  var p = document.getElementById('state'); p.dataset.state = 'done'; p.textContent = 'done';
}, 300);</script></body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def _serving(host: str) -> Iterator[str]:
    server = ThreadingHTTPServer((host, 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def loopback_page() -> Iterator[str]:
    yield from _serving("127.0.0.1")


def _outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_a_loopback_page_loads_its_script_is_waited_on_and_a_screenshot_is_saved(
    browser: Browser, loopback_page: str
) -> None:
    browser.open(loopback_page)
    state = browser.find("#state")
    browser.wait(lambda: state.get_attribute("data-state") == "done", "the page's script to run", timeout=10)
    assert state.text == "done"
    assert browser.script("return [window.innerWidth, window.outerHeight];")[0] == WINDOW[0]
    assert browser.script("return navigator.webdriver;") is True
    browser.mark()
    assert not browser.reloaded()
    browser.open(loopback_page)
    assert browser.reloaded()  # a new document has no mark
    shot = browser.screenshot("harness")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000


@pytest.mark.parametrize("target", ["outside-address", "host-name"])
def test_the_browser_reaches_nothing_beyond_loopback(browser: Browser, target: str) -> None:
    from selenium.common.exceptions import WebDriverException

    refused = "ERR_PROXY_CONNECTION_FAILED|ERR_NAME_NOT_RESOLVED"
    if target == "host-name":
        with pytest.raises(WebDriverException, match=refused):
            browser.open("http://example.com/")
        return
    address = _outside_address()
    assert address is not None, "this machine has no address but loopback to test with"
    pages = _serving(address)
    url = next(pages)
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # Python reaches it ...
            assert resp.read() == PAGE
        with pytest.raises(WebDriverException, match=refused):  # ... the browser does not
            browser.open(url)
    finally:
        pages.close()
