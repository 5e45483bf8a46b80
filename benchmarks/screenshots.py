"""`latentserve bench screenshots`: the page's three views (`serve --ui`) as PNG files in docs/images, for
the README, from headless Chromium (Debian's chromium and chromium-driver; `make browser`).

A gateway with the default gallery and the page runs in its own process; the first view searches with
an MNIST test seven uploaded as a file, the others generate with seed 5 and interpolate seeds 1 to 2 in
class 8.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from benchmarks.gateway import gateway_process
from latentserve.datasets import load_mnist
from serving.triton_server import free_ports

OUT = Path("docs/images")


def headless_chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def main(repository_root: Path, _duration: float = 0) -> None:
    test = load_mnist().test
    seven = next(image for image, label in zip(test.images, test.labels) if label == 7)
    (ui_port,) = free_ports(1)
    with tempfile.TemporaryDirectory() as scratch, gateway_process(repository_root, "--ui", str(ui_port)):
        upload = Path(scratch) / "seven.png"
        Image.fromarray((seven.reshape(28, 28) * 255).round().astype(np.uint8)).save(upload)
        browser = headless_chromium()
        wait = WebDriverWait(browser, 60)
        try:
            browser.get(f"http://127.0.0.1:{ui_port}/")
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            browser.find_element(By.ID, "upload").send_keys(str(upload))
            wait.until(lambda b: b.find_element(By.ID, "look-result").is_displayed()
                       and len(b.find_elements(By.CSS_SELECTOR, "#translations img")) > 0)
            browser.save_screenshot(str(OUT / "ui-digit.png"))
            browser.find_element(By.CSS_SELECTOR, "nav button[data-view=samples]").click()
            browser.find_element(By.ID, "gen-seed").clear()
            browser.find_element(By.ID, "gen-seed").send_keys("5")
            browser.find_element(By.ID, "gen-go").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#gen-grid img")) == 32)
            browser.save_screenshot(str(OUT / "ui-samples.png"))
            browser.find_element(By.CSS_SELECTOR, "nav button[data-view=paths]").click()
            Select(browser.find_element(By.ID, "path-label")).select_by_value("8")
            browser.find_element(By.ID, "path-go").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#path-strip img")) == 10)
            browser.save_screenshot(str(OUT / "ui-interpolation.png"))
        finally:
            browser.quit()
    print(f"wrote {OUT}/ui-digit.png, ui-samples.png, ui-interpolation.png")
