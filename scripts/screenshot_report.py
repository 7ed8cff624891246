"""Render a report.html in headless Chromium and save a full-page screenshot.

    python scripts/screenshot_report.py RUN_DIR/report.html out.png [--width 1280 --height 4000]

Needs Debian's ``chromium`` on PATH (``apt-get install -y chromium``). Nothing is fetched
from the network: the page is self-contained and background networking is disabled.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 4000) -> Path:
    """Save a ``width`` x ``height`` screenshot of ``html`` to ``out`` and return it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out.resolve()}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=4000)
    a = p.parse_args(argv)
    screenshot(a.html, a.out, a.width, a.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
