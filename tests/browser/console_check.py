"""Drives the Ferry console in headless Chromium (Debian's chromium + chromium-driver, through
Selenium) the way an operator would, and checks what they would see.

Usage: console_check.py BASE_URL RELEASE_ID INSTALLS SHOTS_DIR

Checks, in order:
  1. the fleet page lists INSTALLS installs, and the live filter hides rows as you type;
  2. the release page's progress changes without a page reload while the release runs
     (a marker set on `window` survives, and the page's <main> was refreshed in place);
  3. pausing from the page (the button, then the browser's confirmation) pauses the release:
     the page shows `paused` (the caller checks the backend with `ferry release show --json`);
  4. every page fits 1280x800 and a 390-pixel phone width without horizontal scrolling, and
     logs no JavaScript error.
Screenshots of each page go to SHOTS_DIR. Exit status 0 when every check passed; otherwise the
failed check is printed and the status is 1.
"""

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, RELEASE, INSTALLS, SHOTS = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# Generous: the release advances on its own, on a shared CI machine.
WAIT = 90


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,800",
    ]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def fail(msg):
    print(f"console check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def summary_text(d):
    # Read through the DOM each time: the live update replaces the element.
    return d.execute_script(
        "const s = document.querySelector('#view .summary'); return s ? s.textContent : '';")


def fits(d, page):
    for width, height, label in [(1280, 800, "desktop"), (390, 844, "phone")]:
        d.set_window_size(width, height)
        overflow = d.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            fail(f"{page} scrolls sideways by {overflow}px at {width}px wide")
        d.save_screenshot(f"{SHOTS}/{page}-{label}.png")
    d.set_window_size(1280, 800)


def no_js_errors(d, page):
    severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    if severe:
        fail(f"{page}: JavaScript errors: {severe}")


def main():
    d = browser()
    try:
        # 1. The fleet.
        d.get(BASE + "/")
        rows = d.find_elements(By.CSS_SELECTOR, "#fleet tbody tr[data-install]")
        if len(rows) != INSTALLS:
            fail(f"the fleet page lists {len(rows)} installs, expected {INSTALLS}")
        first = rows[0].get_attribute("data-install")
        box = d.find_element(By.ID, "q")
        box.send_keys(first)
        visible = [r for r in d.find_elements(By.CSS_SELECTOR, "#fleet tbody tr") if r.is_displayed()]
        if not visible or len(visible) >= INSTALLS:
            fail(f"filtering by {first!r} left {len(visible)} rows visible")
        box.clear()
        fits(d, "fleet")
        no_js_errors(d, "fleet")

        # 2. The release moves without a reload.
        d.get(f"{BASE}/releases/{RELEASE}")
        d.execute_script("window.__ferryMarker = 'still here';")
        before = d.find_element(By.ID, "view").text
        try:
            WebDriverWait(d, WAIT).until(
                lambda d: d.execute_script(
                    "const v = document.getElementById('view');"
                    "return v.dataset.refreshed ? v.innerText : null;") not in (None, before))
        except Exception:
            fail(f"the release page did not change within {WAIT}s while the release ran")
        if d.execute_script("return window.__ferryMarker") != "still here":
            fail("the release page reloaded instead of updating in place")
        fits(d, "release")
        no_js_errors(d, "release")

        # 3. Pause from the page: the button, the confirmation, then the page says paused.
        buttons = d.find_elements(By.CSS_SELECTOR, "a[data-action='pause']")
        if not buttons:
            fail("the running release shows no Pause button")
        buttons[0].click()
        WebDriverWait(d, 10).until(lambda d: d.switch_to.alert)
        d.switch_to.alert.accept()
        try:
            WebDriverWait(d, 30).until(
                lambda d: "paused" in summary_text(d))
        except Exception:
            try:
                note = "alert: " + d.switch_to.alert.text
            except Exception:
                note = "page: " + summary_text(d)
            fail(f"the release page did not show `paused` after Pause was confirmed ({note})")
        d.save_screenshot(f"{SHOTS}/release-paused.png")

        # 4. The other pages render and fit.
        for path, name in [("/releases", "releases"), ("/lineage", "lineage")]:
            d.get(BASE + path)
            fits(d, name)
            no_js_errors(d, name)
        d.get(f"{BASE}/releases/{RELEASE}")
        links = d.find_elements(By.CSS_SELECTOR, "a[href^='/builds/']")
        if links:
            links[0].click()
            fits(d, "build")
            no_js_errors(d, "build")
    finally:
        d.quit()
    print("console check passed")


if __name__ == "__main__":
    main()
