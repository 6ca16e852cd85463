"""Screenshots of the built documentation site, made with Debian's headless Chromium (committed under docs/screenshots/).

    .venv/bin/mkdocs build --strict && .venv/bin/python scripts/docs_screenshots.py

Serves ``site/`` on a free loopback port with ``python -m http.server --bind 127.0.0.1`` and writes
``home.png`` (the home page: navigation, search box, highlighted code), ``api.png`` (the ``robust_student`` API
page) and ``search.png`` (the search box answering "autoattack", through selenium and chromedriver, because the
search index loads in a web worker after the page).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--window-size=1280,900"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    if not (ROOT / "site" / "index.html").is_file():
        print("build the site first: .venv/bin/mkdocs build --strict", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=ROOT / "site", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        base = f"http://127.0.0.1:{port}"
        for name, path in (("home", "/"), ("api", "/reference/api/")):
            subprocess.run(["/usr/bin/chromium", *FLAGS, f"--screenshot={OUT / name}.png", base + path],
                           check=True, timeout=120, capture_output=True)
        from selenium import webdriver
        from selenium.webdriver.common.by import By

        options = webdriver.ChromeOptions()
        for flag in FLAGS:
            options.add_argument(flag)
        options.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
        try:
            driver.get(base + "/?q=autoattack")
            for _ in range(60):
                if driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item"):
                    break
                time.sleep(0.5)
            else:
                print("the search box gave no results", file=sys.stderr)
                return 1
            driver.save_screenshot(str(OUT / "search.png"))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {', '.join(p.name for p in sorted(OUT.glob('*.png')))} to {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
