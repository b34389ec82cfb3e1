"""The naive export endpoint that tutorials show: the peer a user would otherwise write.

SQLAlchemy reads the table, and a sync generator yields ``json.dumps(dict(row)) + "\\n"``,
one row per yield, through Starlette's ``StreamingResponse`` (which runs each ``next()`` in
the thread pool). Deliberately not optimised: it is a reference point, not our code.

Run by ``bench/run.py`` as
``python -m uvicorn naive_app:app --app-dir bench`` with ``NAIVE_DB=/path/to/exporter.db``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import MetaData, Table, create_engine, select

engine = create_engine(
    f"sqlite:///{os.environ['NAIVE_DB']}", connect_args={"check_same_thread": False}
)
users = Table("users", MetaData(), autoload_with=engine)
app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/users.ndjson")
def export_users() -> StreamingResponse:
    def rows() -> Iterator[str]:
        with engine.connect() as conn:
            for row in conn.execute(select(users)):
                yield json.dumps(dict(row._mapping), default=str) + "\n"

    return StreamingResponse(rows(), media_type="application/x-ndjson")
