"""The Gradio app as a user meets it: page load, Certify → certificate, and the server's memory over many runs.

    python benchmarks/bench_app.py [--certifications 20] [--screenshot docs/app.png] [--json out.json]

Starts ``python -m vision_rs app`` as its own process on a free localhost port, then

* loads the page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) and times
  it until the Certify button can be pressed (and the browser's own load event), ``--loads`` times;
* presses Certify on the embedded image example at the default n (n0 = 100, n = 1000) and times until the
  new certificate text is on the page, ``--presses`` times (nothing is cached: each press certifies anew);
* runs ``--certifications`` certifications of the same example through ``gradio_client`` and reads the server
  process's resident memory (VmRSS) after 5 and after all of them;
* with ``--screenshot``, saves the page after one certification (the README's picture).

Medians are printed; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
IMAGE_ARGS = ("Embedded example", 0, None, "embedded:digits_cnn.sigma_0.25", "", 0, "Gaussian", 0.25, 100, 1000, 0.001,
              0, 24, 8, "mean", "vote", 0.85, True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "vision_rs", "app", "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = server.stdout.readline()  # type: ignore[union-attr]
    if "open http" not in line:
        server.kill()
        raise RuntimeError(f"the app did not start: {line}{server.stdout.read()}")  # type: ignore[union-attr]
    return server


def browser(width: int, height: int, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def answered(driver, before: str) -> bool:
    """The certificate box shows a new certificate: its progress tracker is hidden again (while a run is pending it
    shows the timer and the engine's progress inside the box) and its text differs from ``before``."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "image-certificate")
    tracker = box.find_element(By.CSS_SELECTOR, "[data-testid=status-tracker]")
    text = box.text
    return "hide" in (tracker.get_attribute("class") or "") and text != before and ("Certified" in text or "Abstained" in text)


def page_session(url: str, loads: int, presses: int, screenshot: Path | None) -> dict[str, list[float]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    times: dict[str, list[float]] = {"page_ready_s": [], "load_event_s": [], "certify_s": []}
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(1280, 1400, profile)
        try:
            wait = WebDriverWait(driver, 120, poll_frequency=0.02)
            for _ in range(loads):
                started = time.monotonic()
                driver.get(url)
                wait.until(ready.element_to_be_clickable((By.ID, "image-certify")))
                times["page_ready_s"].append(time.monotonic() - started)
                times["load_event_s"].append(driver.execute_script(
                    "const t = performance.timing; return (t.loadEventEnd - t.navigationStart) / 1000"))
            for _ in range(presses):
                before = driver.find_element(By.ID, "image-certificate").text
                started = time.monotonic()
                driver.find_element(By.ID, "image-certify").click()
                wait.until(lambda d: answered(d, before))
                times["certify_s"].append(time.monotonic() - started)
            if screenshot is not None:
                save_screenshot(driver, screenshot)
        finally:
            driver.quit()
    return times


def save_screenshot(driver, path: Path, width: int = 1280, height: int = 1740) -> None:
    """The whole image tab from the top, as a 256-colour PNG (small enough to commit)."""
    from PIL import Image

    driver.set_window_size(width, height)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.5)  # the page settles at its new size; the picture and the plot are drawn
    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--presses", type=int, default=3)
    parser.add_argument("--certifications", type=int, default=20)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    port = free_port()
    started = time.monotonic()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        result: dict[str, object] = {"server_start_s": time.monotonic() - started}
        times = page_session(url, args.loads, args.presses, args.screenshot)
        result.update({key: statistics.median(values) for key, values in times.items()})
        result["runs"] = times
        result.update(memory_run(url, server.pid, args.certifications))
    finally:
        server.terminate()
        server.wait(timeout=30)
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
