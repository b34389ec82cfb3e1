"""The seeder: deterministic, hostile enough, real images, and identical on every backend."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from exporter.seed import SeedMismatch, SeedPlan, seed_database
from exporter.seed.sqlite import SQLITE_TIMESTAMP, sqlite_rows, sqlite_timestamp
from exporter.seed.users import (
    BIOS,
    COUNTRIES,
    COUNTRY_CITIES,
    CREATED_SPAN_SECONDS,
    DOMAINS,
    EPOCH,
    FIRST_NAMES,
    LAST_NAMES,
    WHOLE_NAMES,
    SeedUser,
    _ascii_slug,
    draw_users,
    generate_users,
)
from PIL import Image
from sqlalchemy import func, select, text

from exporter.app import create_app
from exporter.models import images, users
from tests.conftest import GOLDEN_ROWS, Database, build_database, scratch_postgres_url


async def export(database: Database, fmt: str) -> bytes:
    app = create_app(database.settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get(f"/exports/users.{fmt}")
            assert response.status_code == 200
            return response.content


async def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(
    tmp_path: Path,
) -> None:
    first = await build_database("sqlite", tmp_path / "a", 500, seed=11)
    again = await build_database("sqlite", tmp_path / "b", 500, seed=11)
    other = await build_database("sqlite", tmp_path / "c", 500, seed=12)
    assert await export(first, "csv") == await export(again, "csv")
    assert await export(first, "csv") != await export(other, "csv")
    for name in ("images/avatar-0001.png", "images/avatar-0002.jpg", "files/large-file.bin"):
        assert (first.data_dir / name).read_bytes() == (again.data_dir / name).read_bytes()


async def test_sqlite_and_postgresql_export_the_same_bytes(
    database: Database, sqlite_database: Database
) -> None:
    if database.backend == "sqlite":
        pytest.skip("compares PostgreSQL with SQLite")
    for fmt in ("csv", "ndjson", "json"):
        assert await export(database, fmt) == await export(sqlite_database, fmt)


async def test_seeded_rows_hold_every_hostile_value(sqlite_database: Database) -> None:
    rows = [json.loads(line) for line in (await export(sqlite_database, "ndjson")).splitlines()]
    names = "".join(row["full_name"] for row in rows)
    bios = [row["bio"] for row in rows if row["bio"]]
    assert any(ord(c) > 0x4E00 for c in names), "CJK"
    assert any(ord(c) > 0x1F000 for c in names), "emoji"
    assert "ö" in names or "é" in names, "accents"
    for needle in (",", '"', "\r\n", "\t"):
        assert any(needle in bio for bio in bios), repr(needle)
    assert any(row["city"] is None for row in rows)
    assert any(row["last_login_at"] is None for row in rows)
    assert any(row["avatar_image_id"] is None for row in rows)
    assert {row["plan"] for row in rows} == {"free", "pro", "enterprise"}
    assert {row["is_active"] for row in rows} == {True, False}
    assert len({row["created_at"][:4] for row in rows}) >= 5, "timestamps spread over years"


async def test_seeded_images_decode_and_match_their_recorded_sha256(
    sqlite_database: Database,
) -> None:
    engine = sqlite_database.engine()
    async with engine.connect() as conn:
        records = (await conn.execute(select(images))).mappings().all()
    await engine.dispose()
    assert {r["content_type"] for r in records} == {"image/png", "image/jpeg"}
    for record in records:
        data = (sqlite_database.data_dir / record["storage_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert len(data) == record["byte_size"]
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert Image.MIME[image.format] == record["content_type"]


async def test_seeding_leaves_a_populated_database_alone_unless_reset(tmp_path: Path) -> None:
    database = await build_database("sqlite", tmp_path, 50, seed=3)
    engine = database.engine()
    try:
        plan = SeedPlan(users=10, seed=3, images=2, large_file_bytes=1024)
        assert not await seed_database(engine, tmp_path, plan, progress=lambda _m: None)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(users))).scalar() == 54
        reset = SeedPlan(users=10, seed=3, images=2, large_file_bytes=1024, reset=True)
        assert await seed_database(engine, tmp_path, reset, progress=lambda _m: None)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(users))).scalar() == 10
    finally:
        await engine.dispose()
    assert (tmp_path / "files" / "large-file.bin").stat().st_size == 1024


@pytest.mark.parametrize("users_count", [0, 1])
async def test_tiny_seeds_work(tmp_path: Path, users_count: int) -> None:
    database = await build_database("sqlite", tmp_path, users_count, seed=1)
    text = (await export(database, "csv")).decode()
    assert len(list(csv.reader(io.StringIO(text, newline="")))) == 1 + users_count + 4


def reference_users(count: int, seed: int, image_count: int) -> Iterator[SeedUser]:
    """The seeder as first written, with randrange and choice: the values it must keep."""
    rng = random.Random(seed)
    for user_id in range(1, count + 1):
        if rng.randrange(20) == 0:
            full_name = rng.choice(WHOLE_NAMES)
            slug = "user"
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            full_name = f"{first} {last}"
            slug = f"{_ascii_slug(first)}.{_ascii_slug(last)}"
        country = rng.choice(COUNTRIES)
        city = None if rng.randrange(10) == 0 else rng.choice(COUNTRY_CITIES[country])
        roll = rng.randrange(100)
        plan = "free" if roll < 70 else "pro" if roll < 95 else "enterprise"
        cents = 0 if plan == "free" and rng.randrange(2) else rng.randrange(1, 100_000_000)
        created_at = EPOCH + timedelta(seconds=rng.randrange(CREATED_SPAN_SECONDS))
        last_login_at = (
            None
            if rng.randrange(5) == 0
            else created_at + timedelta(seconds=rng.randrange(1, 300 * 86400))
        )
        yield SeedUser(
            id=user_id,
            email=f"{slug}{user_id}@{rng.choice(DOMAINS)}",
            full_name=full_name,
            country=country,
            city=city,
            plan=plan,
            is_active=rng.randrange(100) < 85,
            lifetime_value=Decimal(cents).scaleb(-2),
            created_at=created_at,
            last_login_at=last_login_at,
            bio=None if rng.randrange(10) < 3 else rng.choice(BIOS),
            avatar_image_id=(
                None if image_count == 0 or rng.randrange(5) < 2
                else rng.randrange(1, image_count + 1)
            ),
        )


def reference_sqlite_row(user: SeedUser) -> tuple[Any, ...]:
    last_login = user.last_login_at
    return (
        *user[:6],
        int(user.is_active),
        f"{user.lifetime_value:.2f}",
        user.created_at.strftime(SQLITE_TIMESTAMP),
        None if last_login is None else last_login.strftime(SQLITE_TIMESTAMP),
        user.bio,
        user.avatar_image_id,
    )


@pytest.mark.parametrize(("count", "seed", "image_count"), [(20_000, 1, 20), (2_000, 7, 0)])
def test_the_generator_draws_exactly_what_randrange_and_choice_drew(
    count: int, seed: int, image_count: int
) -> None:
    # repr, not ==: Decimal("0") == Decimal("0.00") and 1 == True, but neither is stored alike.
    expected = list(reference_users(count, seed, image_count))
    assert repr(list(generate_users(count, seed, image_count))) == repr(expected)
    assert repr(list(sqlite_rows(draw_users(count, seed, image_count)))) == repr(
        [reference_sqlite_row(user) for user in expected]
    )


def test_sqlite_timestamps_are_written_in_sqlalchemys_own_format() -> None:
    last = CREATED_SPAN_SECONDS + 300 * 86400  # just past the latest last_login_at
    for seconds in (0, 59, 86399, 86400, last - 1, *range(0, last, 86400 * 29 + 3607)):
        moment = EPOCH + timedelta(seconds=seconds)
        assert sqlite_timestamp(seconds) == moment.strftime(SQLITE_TIMESTAMP)
        assert sqlite_timestamp(seconds) == f"{moment:%Y-%m-%d %H:%M:%S}.000000"


async def test_seeding_sqlite_gives_the_pooled_connection_its_own_cache_size_back(
    tmp_path: Path,
) -> None:
    fresh = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'exporter.db'}", tmp_path)
    engine = fresh.engine(pool_size=1)
    try:
        plan = SeedPlan(users=10, seed=3, images=2, large_file_bytes=1024)
        assert await seed_database(engine, tmp_path, plan, progress=lambda _m: None)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA cache_size")).scalar() == -2000
    finally:
        await engine.dispose()


async def test_a_seeded_postgresql_table_has_planner_statistics(database: Database) -> None:
    """Without them (autovacuum may be off, or not have come yet) PostgreSQL plans an
    export as a sort of the whole table, and the first row waits for it."""
    if database.backend == "sqlite":
        pytest.skip("PostgreSQL's statistics")
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            estimate = (await conn.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = 'users'")
            )).scalar_one()
    finally:
        await engine.dispose()
    assert estimate > 0


# A populated database whose data directory lost files: seeding again brings them back.

RESEED = SeedPlan(users=300, seed=5, images=4, large_file_bytes=64 * 1024)  # build_database's
LARGE_FILE = "files/large-file.bin"


@pytest.fixture
async def populated(database: Database, tmp_path: Path) -> Database:
    """Seeded as ``RESEED`` says, on ``database``'s backend, with files of its own to lose."""
    url = await scratch_postgres_url("files") if database.backend == "postgresql" else None
    return await build_database(database.backend, tmp_path, RESEED.users, RESEED.seed, url)


def seeded_files(data_dir: Path) -> dict[str, bytes]:
    paths = [*sorted((data_dir / "images").iterdir()), data_dir / LARGE_FILE]
    return {str(path.relative_to(data_dir)): path.read_bytes() for path in paths}


def file_versions(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Each seeded file's inode and mtime: a file written again, even in place, changes."""
    return {name: (status.st_ino, status.st_mtime_ns)
            for name in seeded_files(data_dir)
            for status in [(data_dir / name).stat()]}


async def all_users(database: Database) -> list[tuple[Any, ...]]:
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(select(users).order_by(users.c.id))]
    finally:
        await engine.dispose()


async def reseed(database: Database, plan: SeedPlan = RESEED) -> list[str]:
    """Seed the populated database again; the progress messages."""
    messages: list[str] = []
    engine = database.engine()
    try:
        assert not await seed_database(engine, database.data_dir, plan, messages.append)
    finally:
        await engine.dispose()
    return messages


async def test_seeding_a_populated_database_writes_its_lost_files_back_and_keeps_its_users(
    populated: Database,
) -> None:
    files, rows = seeded_files(populated.data_dir), await all_users(populated)
    (populated.data_dir / "images" / "avatar-0002.jpg").unlink()
    (populated.data_dir / LARGE_FILE).unlink()
    messages = await reseed(populated)
    assert seeded_files(populated.data_dir) == files
    assert await all_users(populated) == rows
    assert len(rows) == RESEED.users + len(GOLDEN_ROWS)
    said = "\n".join(messages)
    assert "recreated 1 of 4 images: avatar-0002.jpg" in said
    assert "recreated large-file.bin" in said and "does not record" in said
    assert not list(populated.data_dir.rglob("*.part")), "written aside, then renamed"


async def test_seeding_a_populated_database_recreates_a_lost_images_directory(
    populated: Database,
) -> None:
    files = seeded_files(populated.data_dir)
    shutil.rmtree(populated.data_dir / "images")
    assert "recreated 4 of 4 images" in "\n".join(await reseed(populated))
    assert seeded_files(populated.data_dir) == files


async def test_a_corrupted_image_is_rewritten_and_the_good_ones_are_not_touched(
    populated: Database,
) -> None:
    files = seeded_files(populated.data_dir)
    corrupted = populated.data_dir / "images" / "avatar-0003.png"
    corrupted.write_bytes(bytes(len(files["images/avatar-0003.png"])))  # same size, zeros
    before = file_versions(populated.data_dir)
    messages = await reseed(populated)
    assert seeded_files(populated.data_dir) == files
    after = file_versions(populated.data_dir)
    assert after.pop("images/avatar-0003.png") != before.pop("images/avatar-0003.png")
    assert after == before
    assert "recreated 1 of 4 images: avatar-0003.png" in "\n".join(messages)


async def test_seeding_a_whole_data_directory_again_writes_nothing(populated: Database) -> None:
    before = file_versions(populated.data_dir)
    messages = await reseed(populated)
    assert "all 4 images and large-file.bin are in place" in messages[-1]
    # The large file is not read, let alone hashed, so another size leaves it alone too.
    await reseed(populated, dataclasses.replace(RESEED, large_file_bytes=1024))
    assert file_versions(populated.data_dir) == before


async def test_images_another_seed_draws_are_not_written_and_the_seeder_says_why(
    populated: Database,
) -> None:
    files = seeded_files(populated.data_dir)
    (populated.data_dir / "images" / "avatar-0001.png").unlink()
    engine = populated.engine()
    try:
        with pytest.raises(SeedMismatch) as raised:
            await seed_database(engine, populated.data_dir, dataclasses.replace(RESEED, seed=6),
                                progress=lambda _m: None)
    finally:
        await engine.dispose()
    assert "cannot recreate 1 of 4 images (avatar-0001.png)" in str(raised.value)
    assert "--reset" in str(raised.value) and "--seed" in str(raised.value)
    assert not (populated.data_dir / "images" / "avatar-0001.png").exists()
    assert seeded_files(populated.data_dir) == {
        name: data for name, data in files.items() if name != "images/avatar-0001.png"
    }


async def test_fewer_images_than_recorded_recreate_those_they_draw_and_no_others(
    populated: Database,
) -> None:
    files = seeded_files(populated.data_dir)
    for name in ("avatar-0001.png", "avatar-0004.jpg"):
        (populated.data_dir / "images" / name).unlink()
    engine = populated.engine()
    try:
        with pytest.raises(SeedMismatch, match=r"1 of 4 images \(avatar-0004\.jpg\)"):
            await seed_database(engine, populated.data_dir,
                                dataclasses.replace(RESEED, images=2), progress=lambda _m: None)
    finally:
        await engine.dispose()
    restored = populated.data_dir / "images" / "avatar-0001.png"
    assert restored.read_bytes() == files["images/avatar-0001.png"]
    assert not (populated.data_dir / "images" / "avatar-0004.jpg").exists()


def seed_command(database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--users", str(RESEED.users), "--images", str(RESEED.images),
             "--large-file-mb", str(RESEED.large_file_bytes / 1024 / 1024)]
    return subprocess.run(
        [sys.executable, "-m", "exporter", "seed", *flags, *args], env=database.env(),
        capture_output=True, text=True, timeout=120,
    )


def test_exporter_seed_brings_lost_files_back_and_says_so(populated: Database) -> None:
    files = seeded_files(populated.data_dir)
    (populated.data_dir / "images" / "avatar-0004.jpg").unlink()
    (populated.data_dir / LARGE_FILE).unlink()
    result = seed_command(populated, "--seed", str(RESEED.seed))
    assert result.returncode == 0, result.stderr
    assert "recreated 1 of 4 images: avatar-0004.jpg" in result.stderr
    assert "recreated large-file.bin" in result.stderr
    assert seeded_files(populated.data_dir) == files


def test_exporter_seed_with_another_seed_recreates_nothing_and_exits_non_zero(
    populated: Database,
) -> None:
    (populated.data_dir / "images" / "avatar-0002.jpg").unlink()
    result = seed_command(populated, "--seed", str(RESEED.seed + 1))
    assert result.returncode == 1
    assert "exporter seed: cannot recreate 1 of 4 images (avatar-0002.jpg)" in result.stderr
    assert "--reset" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (populated.data_dir / "images" / "avatar-0002.jpg").exists()
