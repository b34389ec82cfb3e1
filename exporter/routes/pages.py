"""``GET /``: a page to compose exports and start and watch jobs; ``/docs`` and ``/redoc``,
the API's reference, with their scripts served from here.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN: a blank page in
networks that reach none, where a service like this one often runs. The package
``fastapi-offline`` ships those files (Swagger UI 5, ReDoc 2, their licences in its own);
only its files are used here, served at ``/docs-assets``, with FastAPI's page builders.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(tags=["pages"])
ASSETS = "/docs-assets"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    page = files("exporter").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
    )


@router.get(OAUTH2_REDIRECT, include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


def mount_docs_assets(app: FastAPI) -> None:
    """Swagger UI's and ReDoc's scripts and styles, from the installed package."""
    directory = files("fastapi_offline").joinpath("static")
    app.mount(ASSETS, StaticFiles(directory=str(directory)), name="docs-assets")
