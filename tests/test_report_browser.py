"""Open built reports in headless Chromium at a desktop (1400 x 900) and a phone (375 x 800) viewport.

Asserts what a reader sees: the headline table and the checks panel on the first desktop screen, at most 20 desktop
screens of page, no horizontal page scroll at either width, every image loaded, no console error, nothing fetched from
a network and no absolute machine path in the text. Runs on a fake run folder always, and on the real smoke and cpu
reports where they exist (`python run_all.py --profile smoke` first), saving screenshots in their run folders.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from alzlib import config, report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
DESKTOP, PHONE = (1400, 900), (375, 800)
MAX_SCREENS = 20
# An absolute path in visible text: a slash after a space, a bracket or a quote, then at least one folder. Relative
# paths (evaluation/summary.csv) and URLs (https://...) do not match.
ABSOLUTE_PATH = re.compile(r"(?:^|[\s(\['\"=])/(?:[\w.+-]+/)+[\w.+-]*", flags=re.MULTILINE)
MEASURE = """
const page = document.documentElement;
const box = id => { const element = document.getElementById(id);
  if (!element) return null; const rect = element.getBoundingClientRect(); return [rect.top, rect.bottom]; };
return {height: page.scrollHeight, scrollWidth: page.scrollWidth, clientWidth: page.clientWidth,
        viewport: window.innerHeight, headline: box('headline'), checks: box('checks'),
        text: document.body.innerText,
        images: Array.from(document.images).map(image => ({complete: image.complete, width: image.naturalWidth,
                                                           alt: image.alt}))};
"""


def load_tree_builder():
    """Return make_outputs_tree from test_report.py, loaded by path so the fake run folder stays defined once."""
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


def save_screenshot(driver, path: Path, full_page: bool) -> Path:
    """Capture the viewport, or the whole page, as PNG."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def view(driver, html_path: Path, size: tuple[int, int], screenshots: Path) -> dict:
    """Load `html_path` at a viewport of `size`, measure it and save a first-screen and a full-page screenshot."""
    width, height = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.get(html_path.resolve().as_uri())
    measured = driver.execute_script(MEASURE)
    measured["console"] = driver.get_log("browser")
    save_screenshot(driver, screenshots / f"first_screen_{width}x{height}.png", full_page=False)
    save_screenshot(driver, screenshots / f"full_page_{width}.png", full_page=True)
    return measured


def check_report(html_path: Path, screenshots: Path, profile_dir: Path) -> dict:
    """Open the report at both viewports; return the measurements per width and the requested URLs."""
    driver = start_chromium(profile_dir)
    try:
        driver.set_page_load_timeout(120)
        result = {size[0]: view(driver, html_path, size, screenshots) for size in (DESKTOP, PHONE)}
        result["urls"] = requested_urls(driver)
    finally:
        driver.quit()
    return result


def needs_chromium() -> None:
    """Skip when Chromium or chromedriver is missing."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"needs Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
                    "chromium-driver")


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory) -> dict:
    needs_chromium()
    workspace = tmp_path_factory.mktemp("browser")
    paths = load_tree_builder()(workspace / "outputs" / "smoke" / "synthetic-subject")
    result = check_report(report.build_report(paths), paths.report_screenshots, workspace / "chromium")
    return {**result, "root": paths.root}


@pytest.fixture(scope="module", params=["smoke", "cpu"])
def real_report(request, tmp_path_factory) -> dict:
    needs_chromium()
    paths = config.output_paths(request.param)
    if not paths.report.is_file():
        pytest.skip(f"no {request.param} report at {paths.report}: run `python run_all.py --profile "
                    f"{request.param}` first")
    result = check_report(paths.report, paths.report_screenshots, tmp_path_factory.mktemp("chromium"))
    return {**result, "root": paths.root}


def assert_readable(result: dict) -> None:
    """Every assertion a reader's view must pass, at both widths."""
    desktop = result[DESKTOP[0]]
    for name in ("headline", "checks"):
        top, bottom = desktop[name]
        assert 0 <= top and bottom <= desktop["viewport"], f"{name} is not on the first 1400x900 screen: {top}-{bottom}"
    screens = desktop["height"] / DESKTOP[1]
    print(f"page height at 1400 px: {desktop['height']} px = {screens:.1f} screens")
    assert screens <= MAX_SCREENS, f"{screens:.1f} screens at 1400 px"
    for width in (DESKTOP[0], PHONE[0]):
        measured = result[width]
        assert measured["scrollWidth"] <= measured["clientWidth"], f"horizontal page scroll at {width} px"
        broken = [image["alt"] for image in measured["images"] if not image["complete"] or image["width"] <= 0]
        assert not broken, f"images that did not load at {width} px: {broken}"
        severe = [entry for entry in measured["console"] if entry["level"] == "SEVERE"]
        assert not severe, severe
        paths = ABSOLUTE_PATH.findall(measured["text"])
        assert not paths, f"absolute paths in the text at {width} px: {paths[:5]}"
        assert str(result["root"]) not in measured["text"] and str(config.PROJECT_ROOT) not in measured["text"]


def assert_offline(result: dict) -> None:
    """The report's own requests are all local."""
    report_requests = [url for document, url in result["urls"] if document.startswith("file:")]
    assert report_requests, "the performance log recorded no request of the report page"
    assert all(url.startswith(("file:", "data:")) for url in report_requests), report_requests
    assert not [url for _, url in result["urls"] if url.lower().startswith(("http:", "https:", "ws:", "wss:", "ftp:"))]


def test_fake_report_is_readable_at_desktop_and_phone_width(fake_report):
    assert_readable(fake_report)
    assert len(fake_report[DESKTOP[0]]["images"]) >= 5


def test_fake_report_fetches_nothing_and_saves_screenshots(fake_report):
    assert_offline(fake_report)
    shots = sorted((fake_report["root"] / "report_screenshots").glob("*.png"))
    assert len(shots) == 4 and all(shot.read_bytes().startswith(b"\x89PNG") for shot in shots)


def test_real_report_is_readable_at_desktop_and_phone_width(real_report):
    assert_readable(real_report)
    assert_offline(real_report)
    assert (real_report["root"] / "report_screenshots" / "first_screen_1400x900.png").is_file()
