"""``GET /``: a page to compose exports (and, later, to start and watch jobs)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["pages"])


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    page = files("exporter").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
