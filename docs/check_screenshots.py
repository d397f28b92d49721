"""Check that built documentation pages render, with their images, in headless Chromium.

Usage: ``python docs/check_screenshots.py [HTML_DIR] [--require-browser]``

For the home page, the gallery's index and one example page it asserts that

- every local ``<img>`` and ``<script>`` the HTML references exists on disk, and the page shows at
  least one figure made by the gallery;
- a headless Chromium screenshot (1280x1600) exists and is not blank: its grey levels vary
  (standard deviation above a threshold) and enough of it is not background.

Screenshots are written to ``HTML_DIR/../screenshots``. Without a ``chromium`` executable the
screenshot part is skipped with a message (an error with ``--require-browser``); the HTML checks
always run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

PAGES = {
    "home": "index.html",  # the compressive-sensing figure is near the top
    "gallery": "auto_examples/index.html",  # thumbnails of every example
    "example": "auto_examples/basics/demo_compressed_sensing.html",  # figures further down
}
WINDOW = (1280, 1600)
MIN_STD = 12.0  # grey-level standard deviation of a page with text and figures, out of 255
MIN_INK = 0.02  # fraction of pixels that differ from the page's most common grey level
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # let MathJax typeset before the screenshot
]


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img" and values.get("src"):
            self.images.append(values["src"])
        if tag == "script" and values.get("src"):
            self.scripts.append(values["src"])


def _local(page: Path, reference: str) -> Path | None:
    """The file a relative reference points to, or None for a remote or data URL."""
    parsed = urlparse(reference)
    if parsed.scheme or reference.startswith("//"):
        return None
    return (page.parent / unquote(parsed.path)).resolve()


def check_html(page: Path) -> list[str]:
    """Problems with the page's references (an empty list when all is well)."""
    if not page.is_file():
        return [f"{page} was not built"]
    parser = _References()
    parser.feed(page.read_text(encoding="utf-8"))
    problems = []
    for reference in parser.images + parser.scripts:
        target = _local(page, reference)
        if target is not None and not target.is_file():
            problems.append(f"{page.name} references {reference}, missing at {target}")
    figures = [src for src in parser.images if "sphx_glr_" in src]
    if not figures:
        problems.append(f"{page.name} shows no figure made by the gallery")
    return problems


def screenshot(chromium: str, page: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            page.resolve().as_uri(),
        ]
        subprocess.run(command, check=False, capture_output=True, timeout=180)


def check_screenshot(path: Path) -> list[str]:
    if not path.is_file() or path.stat().st_size == 0:
        return [f"no screenshot at {path}"]
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    if grey.shape != (WINDOW[1], WINDOW[0]):
        return [f"{path.name} is {grey.shape[1]}x{grey.shape[0]}, expected {WINDOW[0]}x{WINDOW[1]}"]
    values, counts = np.unique(grey.astype(np.uint8), return_counts=True)
    background = values[counts.argmax()]
    ink = float(np.mean(np.abs(grey - background) > 8))
    std = float(grey.std())
    print(f"  {path.name}: grey std {std:.1f} (min {MIN_STD}), non-background {ink:.1%}")
    problems = []
    if std < MIN_STD:
        problems.append(f"{path.name} looks blank: grey std {std:.1f} < {MIN_STD}")
    if ink < MIN_INK:
        problems.append(f"{path.name} looks blank: only {ink:.1%} non-background pixels")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", default="docs/_build/html", type=Path)
    parser.add_argument("--require-browser", action="store_true", help="fail without chromium")
    args = parser.parse_args(argv)

    problems: list[str] = []
    for name, relative in PAGES.items():
        page = args.html_dir / relative
        found = check_html(page)
        print(f"{name} page {relative}: {'references OK' if not found else 'PROBLEMS'}")
        problems += found

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "chromium not found: screenshots of the built pages skipped"
        if args.require_browser:
            problems.append(message)
        else:
            print(f"note: {message} (install Debian's `chromium` to run them)")
    else:
        out_dir = args.html_dir.parent / "screenshots"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, relative in PAGES.items():
            out = out_dir / f"{name}.png"
            screenshot(chromium, args.html_dir / relative, out)
            problems += check_screenshot(out)
        print(f"screenshots in {out_dir}")

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
