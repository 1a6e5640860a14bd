"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on file descriptors 3 and 4), for the report's browser test and
its first-screen benchmark. Needs only the `chromium` executable (Debian's package in CI).

    with Chromium.start() as browser:
        page = browser.open("file:///tmp/report.html")   # waits for the load event
        page.evaluate("document.title")
        page.errors                                        # console errors, exceptions, failed loads
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 30.0


def find_chromium() -> str | None:
    """The path of a Chromium executable on PATH, or None."""
    return next((path for path in map(shutil.which, EXECUTABLES) if path), None)


class Chromium:
    """One headless browser process; use start() as a context manager."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int, profile: str):
        self.process, self.to_browser, self.profile = process, to_browser, profile
        self.ids = itertools.count(1)
        self.replies: dict[int, queue.Queue] = {}
        self.events: dict[str, list] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, args=(from_browser,), daemon=True)
        self.reader.start()

    @classmethod
    def start(cls, executable: str | None = None, width: int = 1280, height: int = 900) -> "Chromium":
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError(f"no Chromium found on PATH (looked for {', '.join(EXECUTABLES)})")
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()

        def descriptors():  # the browser reads commands on fd 3 and writes replies on fd 4
            read, write = os.dup(commands_read), os.dup(replies_write)  # out of the way of 3 and 4
            os.dup2(read, 3)
            os.dup2(write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        profile = tempfile.mkdtemp(prefix="fastad-chromium-")
        args = [executable, "--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root (CI containers)
        process = subprocess.Popen(args, preexec_fn=descriptors, close_fds=False, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        return cls(process, commands_write, replies_read, profile)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._dispatch(json.loads(message))

    def _dispatch(self, message: dict) -> None:
        with self.lock:
            if "id" in message:
                self.replies.setdefault(message["id"], queue.Queue()).put(message)
            else:
                key = f"{message.get('sessionId', '')}/{message['method']}"
                self.events.setdefault(key, []).append(message.get("params", {}))

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        """Sends one command and waits for its result; RuntimeError when the browser answers an error."""
        number = next(self.ids)
        with self.lock:
            reply = self.replies.setdefault(number, queue.Queue())
        message = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {method} within {timeout} s") from None
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def events_of(self, session: str, method: str) -> list[dict]:
        with self.lock:
            return list(self.events.get(f"{session}/{method}", []))

    def open(self, url: str, width: int = 1280, height: int = 900) -> "Page":
        """A new tab at url, once its load event has fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        page = Page(self, session)
        page.navigate(url)
        return page


class Page:
    """One tab: navigate, evaluate script, click, type, screenshot; `errors` lists what went wrong."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str) -> float:
        """Loads url; returns the seconds until its load event."""
        loads = len(self.browser.events_of(self.session, "Page.loadEventFired"))
        started = time.perf_counter()
        self.send("Page.navigate", {"url": url})
        while len(self.browser.events_of(self.session, "Page.loadEventFired")) == loads:
            if time.perf_counter() - started > TIMEOUT:
                raise TimeoutError(f"{url} did not finish loading within {TIMEOUT} s")
            time.sleep(0.01)
        return time.perf_counter() - started

    def evaluate(self, expression: str):
        """The value of a script expression (promises awaited); RuntimeError when it throws."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element matching selector."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        """Focuses the element and types text into it."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path) -> None:
        """A PNG of the viewport at path."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, failed resource loads, so far."""
        events = self.browser.events_of
        found = [f"console.error: {e['args']}" for e in events(self.session, "Runtime.consoleAPICalled")
                 if e.get("type") in ("error", "assert")]
        found += [f"exception: {e['exceptionDetails']}" for e in events(self.session, "Runtime.exceptionThrown")]
        found += [f"log: {e['entry'].get('text')} {e['entry'].get('url', '')}" for e in
                  events(self.session, "Log.entryAdded") if e["entry"].get("level") == "error"]
        found += [f"failed load: {e.get('errorText')}" for e in events(self.session, "Network.loadingFailed")]
        return found

    @property
    def requested(self) -> list[str]:
        """The URL of every request the page made."""
        return [e["request"]["url"] for e in self.browser.events_of(self.session, "Network.requestWillBeSent")]
