"""The page at `/`: plain HTML and JavaScript shipped as package data (no build step, nothing from a CDN)."""

from __future__ import annotations

from importlib.resources import files


def page_html() -> str:
    """The page's HTML, read from transferkit/serve/static/index.html."""
    return files("transferkit.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
