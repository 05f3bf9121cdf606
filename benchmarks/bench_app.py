"""The Gradio app as a user meets it: page load, Certify → certificate on every tab's defaults, the server's memory over
many runs, how soon a reloaded page frees the server, and how soon SIGTERM ends it.

    python benchmarks/bench_app.py [--certifications 20] [--screenshot docs/app.png] [--json out.json]

Starts ``python -m vision_rs app`` as its own process on a free localhost port, waits until its start-up work is done
(its CPU idle), then

* loads the page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) at 1400×1000
  and times it until the Certify button can be pressed (and the browser's own load event), ``--loads`` times, and
  records where Certify sits (its bottom edge against the viewport's height);
* presses Certify on each tab's defaults — the image tab with Gaussian, Smooth-Reduce and Hierarchical smoothing (the
  method switches the model), the video tab, the segmentation tab — and times until the certificate is on the page,
  ``--presses`` times each (nothing is cached: each press certifies anew; the first press of a tab is in the median);
* starts a long run (n = 1,000,000), reloads the page once its progress shows, and times from the reload until the
  server's CPU is idle (the abandoned run stopped);
* runs ``--certifications`` certifications of the image default through ``gradio_client`` and reads the server
  process's resident memory (VmRSS) after start-up, after 5 and after all of them;
* sends SIGTERM and times until the process has ended, and checks that its upload folder is gone;
* with ``--screenshot``, saves the image tab after a Gaussian certification (the README's picture).

Medians are printed; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
WINDOW = (1400, 1000)
IMAGE_ARGS = ("Embedded example", 0, None, "embedded:digits_cnn.sigma_0.25", "", 0, "Gaussian", 0.25, 100, 1000, 0.001,
              0, 28, 4, "mean", "vote", 0.85, True)
"""The image tab's defaults, as the API takes them (the seed, 12th, is changed per certification)."""
DEFAULTS = (("image", "Gaussian"), ("image", "Smooth-Reduce"), ("image", "Hierarchical"), ("video", None),
            ("segmentation", None))
"""What each press certifies: a tab, and for the image tab the method chosen on it."""
VERDICTS = ("Certified", "Abstained", "Segmentation certificates", "Cancelled", "Not certified")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, window: float = 0.25, busy: float = 0.2, timeout: float = 600) -> float:
    """Seconds until the process uses less than ``busy`` of one core over a ``window``-second window."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < busy * window:
            return time.monotonic() - started - window
    raise RuntimeError("the server never went idle")


def start_server(port: int, temporary: str) -> subprocess.Popen:
    environment = {**os.environ, "TMPDIR": temporary}
    environment.pop("GRADIO_TEMP_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "vision_rs", "app", "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    line = server.stdout.readline()  # type: ignore[union-attr]
    if "open http" not in line:
        server.kill()
        raise RuntimeError(f"the app did not start: {line}{server.stdout.read()}")  # type: ignore[union-attr]
    return server


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


class Page:
    """The app's page: load it, choose a tab and a method, press Certify and wait for the certificate."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, 600, poll_frequency=0.02)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def load(self) -> float:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ready

        started = time.monotonic()
        self.driver.get(self.url)
        self.wait.until(ready.element_to_be_clickable((By.ID, "image-certify")))
        return time.monotonic() - started

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        [button] = [b for b in self.driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == name.title()]
        button.click()
        self.wait.until(lambda _: self.find(f"#{name}-certify").is_displayed())

    def method(self, name: str) -> None:
        self.find(f"#image-method input[value='{name}']").click()
        if name == "Hierarchical":  # choosing it switches the model
            self.wait.until(lambda _: "digits_cnn_hier" in self.find("#image-model-card").text)

    def text(self, tab: str) -> str:
        return self.find(f"#{tab}-certificate").text

    def certify(self, tab: str) -> float:
        """Press Certify; seconds until the certificate (a verdict, the progress gone) is on the page."""
        started = time.monotonic()
        self.find(f"#{tab}-certify").click()
        self.wait.until(lambda _: not any(words in self.text(tab) for words in VERDICTS))  # the old result is cleared
        self.wait.until(lambda _: any(words in self.text(tab) for words in VERDICTS) and "draws" not in self.text(tab))
        return time.monotonic() - started

    def type(self, css: str, value: str) -> None:
        box = self.find(css)
        box.clear()
        box.send_keys(value)


def page_session(url: str, pid: int, loads: int, presses: int, screenshot: Path | None) -> dict[str, object]:
    times: dict[str, list[float]] = {"page_ready_s": [], "load_event_s": []}
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        try:
            page = Page(driver, url)
            for _ in range(loads):
                times["page_ready_s"].append(page.load())
                times["load_event_s"].append(driver.execute_script(
                    "const t = performance.timing; return (t.loadEventEnd - t.navigationStart) / 1000"))
            button = page.find("#image-certify").rect
            result["certify_button_bottom_px"] = button["y"] + button["height"]
            result["viewport_height_px"] = driver.execute_script("return window.innerHeight")
            for tab, method in DEFAULTS:
                page.load()
                if tab != "image":
                    page.tab(tab)
                if method:
                    page.method(method)
                key = f"certify_{tab}" + (f"_{method.lower().replace('-', '_')}" if method else "") + "_s"
                times[key] = [page.certify(tab) for _ in range(presses)]
            if screenshot is not None:
                page.load()
                page.certify("image")
                save_screenshot(driver, screenshot)
            result["reload_to_idle_s"] = reload_during_long_run(page, pid)
        finally:
            driver.quit()
    result.update({key: statistics.median(values) for key, values in times.items()})
    result["runs"] = times
    return result


def reload_during_long_run(page: Page, pid: int) -> float:
    """Seconds from reloading the page during a run of n = 1,000,000 until the server's CPU is idle."""
    page.load()
    page.type("#image-n input", "1000000")
    page.find("#image-certify").click()
    page.wait.until(lambda _: "draws" in page.text("image"))
    time.sleep(2)
    reloaded = time.monotonic()
    page.driver.get(page.url)
    wait_idle(pid, window=0.1)
    return time.monotonic() - reloaded


def save_screenshot(driver, path: Path, width: int = 1280, height: int = 2000) -> None:
    """The whole image tab from the top, as a 256-colour PNG (small enough to commit)."""
    from PIL import Image

    driver.set_window_size(width, height)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.5)  # the page settles at its new size; the pictures and the plot are drawn
    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    driver.set_window_size(*WINDOW)


def memory_run(url: str, pid: int, certifications: int) -> dict[str, float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    memory: dict[str, float] = {"rss_start_mib": rss_mib(pid)}
    seconds = []
    for i in range(certifications):
        started = time.monotonic()
        client.predict(*IMAGE_ARGS[:11], i, *IMAGE_ARGS[12:], api_name="/certify_image")
        seconds.append(time.monotonic() - started)
        if i + 1 == 5:
            memory["rss_after_5_mib"] = rss_mib(pid)
    memory[f"rss_after_{certifications}_mib"] = rss_mib(pid)
    memory["client_certify_median_s"] = statistics.median(seconds)
    return memory


def timed(step: Callable[[], object]) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--presses", type=int, default=3)
    parser.add_argument("--certifications", type=int, default=20)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as temporary:
        started = time.monotonic()
        server = start_server(port, temporary)
        url = f"http://127.0.0.1:{port}/"
        try:
            result: dict[str, object] = {"server_start_s": time.monotonic() - started,
                                         "start_up_work_s": wait_idle(server.pid)}
            result.update(page_session(url, server.pid, args.loads, args.presses, args.screenshot))
            result.update(memory_run(url, server.pid, args.certifications))
            (folder,) = Path(temporary).glob("vision-rs-app-*")
            result["sigterm_to_exit_s"] = timed(lambda: (server.send_signal(signal.SIGTERM), server.wait(timeout=60)))
            result["sigterm_exit_code"] = server.returncode
            result["upload_folder_left"] = folder.exists()
        finally:
            if server.poll() is None:
                server.kill()
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
