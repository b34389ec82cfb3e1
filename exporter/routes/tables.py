"""``GET /tables`` and ``GET /tables/{table}``: what can be exported, and how."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request

from exporter.catalog import Table
from exporter.follow import followable
from exporter.formats import FORMATS
from exporter.openapi import DATABASE_BUSY, not_found
from exporter.params import parameter_names
from exporter.routes.deps import CatalogDep

router = APIRouter(tags=["tables"])


def describe(table: Table, request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    path = quote(table.name, safe="")
    return {
        "name": table.name,
        "type": "view" if table.view else "table",
        "columns": [column.describe() for column in table.columns],
        "primary_key": list(table.key),
        "approximate_rows": table.rows,
        "exports": {fmt.name: f"{base}/exports/{path}.{fmt.extension}"
                    for fmt in FORMATS.values()},
        "parameters": parameter_names(table),
        # A live stream of its rows (Server-Sent Events), where it can be followed.
        "stream": f"{base}/streams/{path}"
        if followable(table, request.app.state.settings) else None,
    }


@router.get("/tables", responses=DATABASE_BUSY)
async def list_tables(request: Request, catalog: CatalogDep) -> dict[str, Any]:
    """Every exportable table and view, with its columns, key, size and export URLs."""
    tables = await catalog.tables()
    return {"tables": [describe(tables[name], request) for name in sorted(tables)]}


# :path, as GET /exports: a name may hold a slash (sent as %2F, decoded before routing).
@router.get(
    "/tables/{table:path}",
    responses=not_found("No such table or view: `valid` lists those there are.") | DATABASE_BUSY,
)
async def get_table(table: str, request: Request, catalog: CatalogDep) -> dict[str, Any]:
    """One table or view: its columns, key, size and export URLs."""
    return describe(await catalog.get(table), request)
