"""The deterministic seeder behind ``exporter seed``: users, images and large files.

SQLite gets batched ``executemany`` inserts inside one transaction; PostgreSQL gets
``COPY`` through asyncpg's ``copy_records_to_table``. Both store the same values, so both
export the same bytes.

The seeder creates the demo's tables itself (the service's migrations make only its own
state). A database whose ``users`` or ``images`` is a table of its own, with other columns,
is refused before anything is written: ``NotTheDemo``.

A database that already holds users is left alone (unless ``reset``), but the files it
refers to are made whole again: ``restore_files``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter import models
from exporter.db import backend_name, migrate

from .files import (
    SeedImage,
    damaged_images,
    rewrite_images,
    write_images,
    write_large_file,
)
from .sqlite import seed_cache, sqlite_rows
from .users import SeedUser, draw_users, seed_user

INSERT_BATCH = 20_000
PROGRESS_EVERY = 100_000
USER_COLUMNS = tuple(SeedUser._fields)
IMAGE_COLUMNS = tuple(SeedImage._fields)
LARGE_FILE_NAME = "large-file.bin"
NAMES_SHOWN = 5  # file names a message lists before "and N more"

Progress = Callable[[str], None]
Batch = list[Any]


@dataclass(frozen=True)
class SeedPlan:
    users: int = 1_000_000
    seed: int = 1
    images: int = 20
    large_file_bytes: int = 256 * 1024 * 1024
    reset: bool = False


class SeedMismatch(Exception):
    """Seeded images are lost, and this plan draws other bytes than the database records."""


class NotTheDemo(Exception):
    """The database has a ``users`` or ``images`` table of its own, which is not the demo's."""


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def seed_database(
    engine: AsyncEngine, data_dir: Path, plan: SeedPlan, progress: Progress = print_progress
) -> bool:
    """Seed an empty database (or any, with ``reset``); return False if its users were left
    alone, after ``restore_files``. Raises NotTheDemo, having written nothing, if the
    database has tables of its own under the demo's names."""
    await check_demo_tables(engine)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.run_sync(models.metadata.create_all)  # those missing: checkfirst
        existing = (await conn.execute(select(func.count()).select_from(models.users))).scalar_one()
    if existing and not plan.reset:
        progress(f"database already holds {existing} users; not seeding (use --reset)")
        await restore_files(engine, data_dir, plan, progress)
        return False

    started = time.perf_counter()
    written_images = write_images(data_dir / "images", plan.images, plan.seed)
    digest = write_large_file(
        data_dir / "files" / LARGE_FILE_NAME, plan.large_file_bytes, plan.seed
    )
    progress(
        f"wrote {len(written_images)} images and {LARGE_FILE_NAME} "
        f"({plan.large_file_bytes} bytes, sha256 {digest})"
    )
    drawn = draw_users(plan.users, plan.seed, len(written_images))

    def user_batches(rows: Iterable[Any]) -> Iterator[Batch]:
        return _reporting(_batches(rows), plan.users, progress)

    async with engine.begin() as conn:
        await _clear(conn)  # first, so that COPY runs inside this same transaction
        if backend_name(engine) == "postgresql":
            await _copy(conn, "images", IMAGE_COLUMNS, _batches(written_images))
            await _copy(conn, "users", USER_COLUMNS, user_batches(map(seed_user, drawn)))
            # Statistics now, not whenever autovacuum comes (if it is on at all): without
            # them the planner sorts the whole table before an export's first row.
            await conn.execute(text("ANALYZE users, images"))
        else:
            async with seed_cache(conn):
                await _insert(conn, "images", IMAGE_COLUMNS, _batches(written_images))
                await _insert(conn, "users", USER_COLUMNS, user_batches(sqlite_rows(drawn)))
    progress(f"seeded {plan.users} users in {time.perf_counter() - started:.1f} s")
    return True


async def check_demo_tables(engine: AsyncEngine) -> None:
    """NotTheDemo if the database has a ``users`` or ``images`` whose columns are not the
    demo's: a table of the user's, which the seeder must neither fill nor alter."""
    async with engine.connect() as conn:
        foreign = await conn.run_sync(_foreign_demo_tables)
    if foreign:
        described = "; ".join(
            f"{name} has the columns {', '.join(found)}, the demo's "
            f"{', '.join(models.metadata.tables[name].c.keys())}"
            for name, found in foreign
        )
        names = " and ".join(name for name, _ in foreign)
        raise NotTheDemo(
            f"this database already has its own table{'s' if len(foreign) > 1 else ''} "
            f"{names}, not the demo's ({described}). "
            "Nothing was written: the seeder never fills or alters a table it did not make. "
            "Use another database for the demo: EXPORTER_DATABASE_URL naming an empty "
            "PostgreSQL database or a new SQLite file"
        )


def _foreign_demo_tables(conn: Connection) -> list[tuple[str, list[str]]]:
    inspector = inspect(conn)
    foreign = []
    for demo in models.metadata.sorted_tables:
        if inspector.has_table(demo.name):
            found = [column["name"] for column in inspector.get_columns(demo.name)]
            if set(found) != set(demo.c.keys()):
                foreign.append((demo.name, found))
    return foreign


async def restore_files(
    engine: AsyncEngine, data_dir: Path, plan: SeedPlan, progress: Progress = print_progress
) -> None:
    """Write again the seeded files the data directory lost, never touching a good one.

    Images whose file is missing or does not hash to its recorded sha256 are drawn again
    with the plan's seed and count, and written only where they come out as recorded;
    SeedMismatch is raised for the others, once the rest is done. The large file is
    written if it is missing (the database does not record it: the plan decides its bytes)
    and never read otherwise: hashing 256 MiB on every start would be too slow.
    """
    async with engine.connect() as conn:
        rows = await conn.execute(select(models.images).order_by(models.images.c.id))
        recorded = [SeedImage(**row._mapping) for row in rows]
    damaged = damaged_images(data_dir, recorded)
    unwritten = rewrite_images(data_dir, damaged, plan.images, plan.seed)
    rewritten = [record for record in damaged if record not in unwritten]
    if rewritten:
        progress(f"recreated {len(rewritten)} of {len(recorded)} images: {_names(rewritten)}")
    large_file = data_dir / "files" / LARGE_FILE_NAME
    if not large_file.exists():
        digest = write_large_file(large_file, plan.large_file_bytes, plan.seed)
        progress(
            f"recreated {LARGE_FILE_NAME} from --seed {plan.seed} and --large-file-mb "
            f"({plan.large_file_bytes} bytes, sha256 {digest}); the database does not record "
            "the original, so these arguments decide its bytes"
        )
    elif not damaged:
        progress(f"all {len(recorded)} images and {LARGE_FILE_NAME} are in place")
    if unwritten:
        raise SeedMismatch(
            f"cannot recreate {len(unwritten)} of {len(recorded)} images "
            f"({_names(unwritten)}): --seed {plan.seed} --images {plan.images} draw other "
            "bytes than the database records, so it was seeded with another --seed or "
            "--images (or another Pillow build). Run exporter seed again with the original "
            "--seed and --images, or with --reset to seed everything afresh (which replaces "
            "every user)"
        )


def _names(records: list[SeedImage]) -> str:
    shown = ", ".join(record.filename for record in records[:NAMES_SHOWN])
    more = len(records) - NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


async def _clear(conn: AsyncConnection) -> None:
    if backend_name(conn) == "postgresql":
        await conn.execute(text("TRUNCATE users, images"))
    else:
        await conn.execute(models.users.delete())
        await conn.execute(models.images.delete())


def _reporting(batches: Iterable[Batch], total: int, progress: Progress) -> Iterator[Batch]:
    started = time.perf_counter()
    done = 0
    for batch in batches:
        yield batch
        before, done = done, done + len(batch)
        if done // PROGRESS_EVERY > before // PROGRESS_EVERY:
            progress(f"  {done}/{total} users ({time.perf_counter() - started:.1f} s)")


def _batches(rows: Iterable[Any]) -> Iterator[Batch]:
    iterator = iter(rows)
    while batch := list(islice(iterator, INSERT_BATCH)):
        yield batch


async def _insert(
    conn: AsyncConnection, table: str, columns: tuple[str, ...], batches: Iterable[Batch]
) -> None:
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    )
    for batch in batches:
        await conn.exec_driver_sql(statement, batch)


async def _copy(
    conn: AsyncConnection, table: str, columns: tuple[str, ...], batches: Iterable[Batch]
) -> None:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    for batch in batches:
        await raw.copy_records_to_table(table, records=batch, columns=list(columns))
