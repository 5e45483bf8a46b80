"""The page (`serve --ui`) in headless Chromium, driven by Selenium: each view, a search by an uploaded
image, and the same tokens as the API, beside TLS too. Debian's chromium and chromium-driver (`make test` installs them)."""
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from benchmarks.certificates import CertificateAuthority
from benchmarks.screenshots import headless_chromium
from serving import tokens
from serving.triton_server import free_ports
from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow  # starts a browser


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A gateway with the default gallery and the page: the page's address."""
    (ui_port,) = free_ports(1)
    gateway = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), ui_port=ui_port).start()
    yield f"http://127.0.0.1:{gateway.server.ui.port}/"
    gateway.stop()


def wait(browser, condition, timeout: float = 60):
    return WebDriverWait(browser, timeout).until(lambda _: condition())


def test_an_uploaded_digit_shows_its_class_neighbours_and_translations(browser, page, small_mnist, tmp_path):
    seven = next(image for image, label in zip(small_mnist.test.images, small_mnist.test.labels) if label == 7)
    upload = tmp_path / "seven.png"
    Image.fromarray((seven.reshape(28, 28) * 255).round().astype(np.uint8)).save(upload)
    browser.get(page)
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.find_element(By.ID, "upload").send_keys(str(upload))
    wait(browser, lambda: browser.find_element(By.ID, "look-result").is_displayed())
    assert browser.find_element(By.ID, "label").text == "7"
    assert browser.find_element(By.ID, "verdict").text.startswith("Like the training data (score ")  # the density model's word
    neighbours = browser.find_elements(By.CSS_SELECTOR, "#neighbours .hit")
    assert len(neighbours) == 8 and all(hit.find_elements(By.TAG_NAME, "img") for hit in neighbours)  # gallery thumbnails
    assert sum(hit.text.startswith("7 ") for hit in neighbours) >= 6  # the neighbours' labels: mostly sevens
    directions = {cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#translations .hit")}
    assert {"mnist2uci", "edges2digit"} <= directions


def test_noise_is_called_unlike_the_training_data(browser, page, tmp_path):
    upload = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(upload)
    browser.get(page)
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.find_element(By.ID, "upload").send_keys(str(upload))
    wait(browser, lambda: browser.find_element(By.ID, "look-result").is_displayed())
    assert browser.find_element(By.ID, "verdict").text.startswith("Unlike the training data")


def test_the_samples_and_interpolation_views_show_images(browser, page):
    browser.get(page)
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.find_element(By.CSS_SELECTOR, "nav button[data-view=samples]").click()
    browser.find_element(By.ID, "gen-seed").clear()
    browser.find_element(By.ID, "gen-seed").send_keys("5")
    browser.find_element(By.ID, "gen-go").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gen-grid img")) == 32)
    browser.find_element(By.CSS_SELECTOR, "nav button[data-view=paths]").click()
    browser.find_element(By.ID, "path-go").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#path-strip img")) == 10)
    assert browser.find_element(By.ID, "path-error").text == ""


def test_beside_tls_the_page_asks_for_the_apis_token(tmp_path):
    tokens_file = tmp_path / "tokens.json"
    token = tokens.create(tokens_file, "viewer", ["read"])
    server = CertificateAuthority(tmp_path, "ca").issue("gateway", server=True)
    (ui_port,) = free_ports(1)
    gateway = RunningGateway(data_dir=tmp_path / "data", gallery="none", tokens_file=tokens_file, ui_port=ui_port,
                             tls_cert_file=server.cert_file, tls_key_file=server.key_file).start()
    url = f"http://127.0.0.1:{ui_port}/api/models"
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=30)
        assert refused.value.code == 401 and "UNAUTHENTICATED" in json.loads(refused.value.read())["error"]
        request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"})
        assert "acgan" in json.loads(urllib.request.urlopen(request, timeout=30).read())["generators"]
    finally:
        gateway.stop()
