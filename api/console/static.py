"""The console's static files (Chart.js, its stylesheet and script), served from inside the package."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

DIR = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=DIR), name="console-static")
