"""The page at ``/`` in a real browser: headless Chromium (Debian's package) via selenium.

Chromium and chromedriver come from Debian's ``chromium`` and ``chromium-driver`` packages;
``make setup`` installs them (tests/install_browser.sh) where it runs as root or with
passwordless sudo, and this module tries the same once. Where they cannot be had it skips,
saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from serve_helpers import build_bank, build_checkpoint, running_server

pytest.importorskip("selenium")
pytest.importorskip("uvicorn")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
INSTALLER = Path(__file__).with_name("install_browser.sh")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)


def browser_binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    found = browser_binaries()
    if found is None:
        done = subprocess.run(["sh", str(INSTALLER)], capture_output=True, text=True, timeout=900)
        found = browser_binaries()
        if found is None:
            reason = done.stderr.strip().splitlines()[-1:] or ["install failed"]
            pytest.skip(f"no headless Chromium + chromedriver: {reason[0]}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read below
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries
    from polycap.serve.app import create_app
    from polycap.serve.models import load_models

    root = tmp_path_factory.mktemp("page")
    shapes = make_synthetic_set(get_registries().languages.get("en"), root / "shapes", 12, seed=5)
    checkpoint = build_checkpoint("en", CAPTIONS, root / "en")
    bank = build_bank(shapes.train_file, checkpoint, root / "bank", "en")
    app = create_app(load_models([str(checkpoint)], [str(bank)]))
    with running_server(app) as url:
        yield url, sorted(shapes.image_dir.glob("*.png"))


def test_the_page_captions_an_uploaded_image(browser, server, tmp_path: Path) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, images = server
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element(By.ID, "model-info").text.startswith("en:"))
    length = browser.find_element(By.NAME, "max_length")
    length.clear()
    length.send_keys("6")
    browser.find_element(By.ID, "files").send_keys(f"{images[0]}\n{corrupt}")

    def finished(b):
        cards = b.find_elements(By.CSS_SELECTOR, ".result")
        states = [card.get_attribute("data-status") for card in cards]
        return cards if len(cards) == 2 and "pending" not in states else False

    cards = {card.find_element(By.TAG_NAME, "h3").text: card for card in wait.until(finished)}
    browser.save_screenshot(str(tmp_path / "page.png"))
    shown = [li.text for li in cards[images[0].name].find_elements(By.CSS_SELECTOR, "li.caption")]
    retrieved = cards[images[0].name].find_elements(By.CSS_SELECTOR, "li.retrieved")
    error = cards["corrupt.png"].find_element(By.CSS_SELECTOR, ".error").text

    files = {"image": (images[0].name, images[0].read_bytes(), "image/png")}
    expected = httpx.post(f"{url}/caption", files=files, data={"max_length": "6"}).json()
    assert shown == expected["captions"] and shown[0]
    assert len(retrieved) == 3
    assert browser.find_element(By.ID, "k-label").is_displayed()  # shown: there is a bank
    captions = cards[images[0].name].find_element(By.CSS_SELECTOR, "ol.captions")
    assert captions.get_attribute("lang") == "en"
    assert error.startswith("corrupt.png: not a readable image")


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/docs", ".swagger-ui .opblock"), ("/redoc", ".redoc-wrap .api-content")],
)
def test_the_api_docs_render_offline(browser, server, path: str, rendered: str) -> None:
    """Swagger UI and ReDoc load their scripts and styles from the server itself (no CDN):
    the machine has no internet, and every resource the page asked for is the server's, but
    for ReDoc's sidebar logo, which the pages' Content-Security-Policy refuses before it is
    fetched (the console says so)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    browser.get(url + path)
    found = WebDriverWait(browser, 60).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, rendered) or False
    )
    assert found[0].is_displayed()
    assert "/v1/chat/completions" in browser.find_element(By.TAG_NAME, "body").text
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any(name.startswith(f"{url}/static-offline-docs/") for name in loaded), loaded
    console = " ".join(entry["message"] for entry in browser.get_log("browser"))
    for name in loaded:
        if not name.startswith(url):
            blocked = f"Loading the image '{name}' violates the following Content Security"
            assert blocked in console and "has been blocked" in console, (name, console)
