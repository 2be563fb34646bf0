"""Open the built report in headless Chromium: every image loads, no console errors, nothing fetched from a network."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from alzlib import report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000")


def load_tree_builder():
    """Return make_outputs_tree from test_report.py, loaded by path so the fake tree stays defined once."""
    specification = importlib.util.spec_from_file_location("report_tree_fixture",
                                                           Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module.make_outputs_tree


def start_chromium(profile_dir: Path):
    """Start headless Chromium through chromedriver, logging the console and network events."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def requested_urls(driver) -> list[tuple[str, str]]:
    """Return (document URL, requested URL) of every request in the performance log."""
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requests.append((message["params"].get("documentURL", ""), message["params"]["request"]["url"]))
    return requests


def save_full_page_screenshot(driver, path: Path) -> Path:
    """Capture the whole page, not only the viewport, as PNG."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def check_report_in_browser(html_path: Path, screenshot_path: Path, profile_dir: Path) -> dict:
    """Open `html_path`, wait for it to load, and return images, console entries, requests and the screenshot."""
    driver = start_chromium(profile_dir)
    try:
        driver.set_page_load_timeout(60)
        driver.get(html_path.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(image => ({complete: image.complete, "
            "width: image.naturalWidth, alt: image.alt}));")
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section h2'))"
                                         ".map(heading => heading.textContent);")
        console = driver.get_log("browser")
        urls = requested_urls(driver)
        save_full_page_screenshot(driver, screenshot_path)
    finally:
        driver.quit()
    return {"images": images, "sections": sections, "console": console, "urls": urls, "screenshot": screenshot_path}


@pytest.fixture(scope="module")
def browser_result(tmp_path_factory) -> dict:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"needs Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
                    "chromium-driver")
    workspace = tmp_path_factory.mktemp("browser")
    paths = load_tree_builder()(workspace / "outputs" / "smoke")
    result = check_report_in_browser(report.build_report(paths), workspace / "report_screenshot.png",
                                     workspace / "chromium_profile")
    print(f"report screenshot: {result['screenshot']}")
    return result


def test_every_image_loads(browser_result):
    images = browser_result["images"]
    assert len(images) == 9
    broken = [image["alt"] for image in images if not image["complete"] or image["width"] <= 0]
    assert not broken, f"images that did not load: {broken}"


def test_console_has_no_errors(browser_result):
    severe = [entry for entry in browser_result["console"] if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_nothing_is_fetched_from_a_network(browser_result):
    requests = browser_result["urls"]
    report_requests = [url for document, url in requests if document.startswith("file:")]
    assert report_requests, "the performance log recorded no request of the report page"
    # Chromium's own start page asks for chrome:// resources; only the report's requests must all be local.
    assert all(url.startswith(("file:", "data:")) for url in report_requests), report_requests
    assert not [url for _, url in requests if url.lower().startswith(("http:", "https:", "ws:", "wss:", "ftp:"))]


def test_every_section_renders_and_a_screenshot_is_saved(browser_result):
    assert browser_result["sections"] == [title for _, title, _ in report.SECTIONS]
    screenshot = browser_result["screenshot"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
