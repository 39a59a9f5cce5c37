"""Run a web export's page in headless Chromium and read its result: the check of
`format="web"` in its own runtime, used by the tests and bench/bench_web.py.

The folder is served on 127.0.0.1 by the standard library's http.server (what
`python -m http.server` runs), and Chromium is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on file descriptors 3 and 4), so
nothing beyond the Python standard library and a Chromium binary is needed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchshrink.errors import ConfigError, ShrinkError

__all__ = ["BrowserError", "find_chromium", "serve", "run_page", "CHROMIUM_NAMES"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(ShrinkError):
    """Chromium did not start, or the page did not finish."""


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        pass


@contextlib.contextmanager
def serve(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_TRAMPOLINE = """
import os, sys
high = [os.dup2(int(fd), 100 + i) for i, fd in enumerate(sys.argv[1:3])]
for fd, target in zip(high, (3, 4)):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class _DevTools:
    """A DevTools protocol client on Chromium's pipe: commands by id, events collected."""

    def __init__(self, chromium: str, profile: Path, window: tuple[int, int]) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                "--disable-extensions", "--disable-background-networking", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "about:blank"]
        # The pipe must sit on fds 3 and 4 in the browser: a Python trampoline moves it there
        # (through high numbers first, so neither end overwrites the other) and execs Chromium.
        self.proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(to_browser_r), str(from_browser_w), *args],
                                     pass_fds=(to_browser_r, from_browser_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._lock:
                            q = self._replies.get(msg["id"])
                        if q is not None:
                            q.put(msg)
                    else:
                        self.events.append(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        i = next(self._ids)
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._replies[i] = q
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {method} within {timeout:.0f} s"
                               + self._stderr_tail()) from None
        if "error" in reply:
            raise BrowserError(f"Chromium refused {method}: {reply['error'].get('message', reply['error'])}")
        return dict(reply.get("result", {}))

    def wait_event(self, method: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise BrowserError(f"the page did not fire {method} within {timeout:.0f} s" + self._stderr_tail())
            time.sleep(0.02)

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return f" (Chromium exited {self.proc.returncode}: {self.proc.stderr.read().decode(errors='replace')[-800:]})"

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# Waits for app.js to publish its promise; a page whose script never ran (a missing file, a
# syntax error) answers with what its status line says instead of hanging.
_RESULT_JS = """(async () => {
  const end = Date.now() + %d;
  while (!window.torchshrinkWeb && Date.now() < end) await new Promise(r => setTimeout(r, 50));
  if (!window.torchshrinkWeb) return {status: "error", error: "app.js never ran: " +
      (document.getElementById("status") || document.body).textContent};
  return await window.torchshrinkWeb;
})()"""


def run_page(directory: str | os.PathLike[str], *, chromium: str | None = None, page: str = "index.html",
             screenshot: str | os.PathLike[str] | None = None, window: tuple[int, int] = (1000, 900),
             timeout: float = 180.0) -> dict[str, Any]:
    """Serve `directory`, load `page` in headless Chromium and return the page's result
    (window.torchshrinkWeb) with "browser" (Chromium's version) and "requests" (every URL
    the page fetched) added; optionally save a full-page PNG screenshot."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ConfigError("no Chromium browser found on PATH (looked for " + ", ".join(CHROMIUM_NAMES)
                          + "); install one, e.g. apt-get install chromium")
    if not Path(directory, page).is_file():
        raise ConfigError(f"{str(Path(directory, page))!r} does not exist; export the folder first "
                          "(ts.export(model, DIR, example=x, format='web'))")
    with serve(directory) as base, tempfile.TemporaryDirectory(prefix="torchshrink-chromium-") as profile:
        tools = _DevTools(chromium, Path(profile), window)
        try:
            version = tools.send("Browser.getVersion").get("product", "unknown")
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Emulation.setDeviceMetricsOverride", {"width": window[0], "height": window[1],
                                                              "deviceScaleFactor": 1, "mobile": False},
                       session=session)
            tools.send("Page.navigate", {"url": base + page}, session=session)
            tools.wait_event("Page.loadEventFired", timeout)
            reply = tools.send("Runtime.evaluate", {"expression": _RESULT_JS % int(timeout * 1000),
                                                    "awaitPromise": True, "returnByValue": True},
                               session=session, timeout=timeout + 10)
            if "exceptionDetails" in reply:
                raise BrowserError(f"the page's result could not be read: {reply['exceptionDetails']}")
            result = dict(reply["result"].get("value") or {})
            if screenshot is not None:
                size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": window[0], "height": min(max(size["height"], window[1]), 4000),
                        "scale": 1}
                shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip}, session=session)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            result["browser"] = version
            result["requests"] = [e["params"]["request"]["url"] for e in tools.events
                                  if e.get("method") == "Network.requestWillBeSent"]
            result["base_url"] = base
            return result
        finally:
            tools.close()
