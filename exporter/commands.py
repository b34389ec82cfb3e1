"""The service's commands (serve, worker, migrate, seed, export), as cli.py parsed them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import aclosing
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.auth import listen_refusal
from exporter.catalog import Catalog
from exporter.cli import NAMED_PARAMETERS
from exporter.config import Settings, describe, load_settings
from exporter.db import StateUnavailable, backend_name, create_engine, migrate
from exporter.errors import InvalidParameter, NotFound
from exporter.formats import FORMATS, Format
from exporter.job_files import write_file
from exporter.params import parse_query
from exporter.pipeline import open_export
from exporter.storage import ChunkStream

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_STARTUP_FAILED = 3  # as uvicorn.run exits when the server could not start (a port taken)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ValueError as exc:  # pydantic's ValidationError, or pydantic-settings' SettingsError
        shown = describe(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"exporter: invalid settings: {shown}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, settings)
    except StateUnavailable as exc:
        print(f"exporter {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        return _serve(args, settings)
    if args.command == "worker":
        return asyncio.run(_worker(settings))
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return 0
    if args.command == "seed":
        return asyncio.run(_seed(settings, args))
    if args.command == "follow":
        return asyncio.run(_follow(settings, args.action, args.table))
    return _export(settings, args)


def _engine(settings: Settings, **options: int) -> AsyncEngine:
    return create_engine(
        settings.resolved_database_url, state_path=settings.state_database_path, **options
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    refusal = listen_refusal(args.host, settings)
    if refusal:
        print(f"exporter serve: {refusal}", file=sys.stderr)
        return EXIT_USAGE

    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from exporter.server import GracefulServer

    # The service's own loggers (the job worker's above all) print beside uvicorn's.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["exporter"] = {
        "handlers": ["default"], "level": args.log_level.upper(), "propagate": False,
    }
    config = uvicorn.Config(
        "exporter.app:create_app",
        factory=True,
        log_config=log_config,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    server = GracefulServer(config)
    server.run()
    return 0 if server.started else EXIT_STARTUP_FAILED


async def _worker(settings: Settings) -> int:
    from exporter.worker import Worker

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    pool_size, max_overflow = settings.pool(api=False)
    engine = _engine(settings, pool_size=pool_size, max_overflow=max_overflow,
                     sqlite_nice=settings.sqlite_nice)
    worker = Worker(engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await worker.start()
    except RuntimeError as exc:
        print(f"exporter worker: {exc}", file=sys.stderr)
        await engine.dispose()
        return EXIT_FAILED
    stopping = asyncio.create_task(stop.wait())
    try:
        assert worker.task is not None
        await asyncio.wait({worker.task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        failed = worker.task.done() and not worker.task.cancelled()
        await worker.stop()  # running jobs go back to the queue
    finally:
        stopping.cancel()
        await engine.dispose()
    return EXIT_FAILED if failed else 0


async def _migrate(settings: Settings) -> None:
    engine = _engine(settings)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def _follow(settings: Settings, action: str, table: str) -> int:
    """``exporter follow install|uninstall TABLE``: the trigger that NOTIFYs live streams."""
    from exporter.changes import install_statements, uninstall_statements

    engine = _engine(settings)
    try:
        if backend_name(engine) != "postgresql":
            print("exporter follow: SQLite needs no trigger: live streams watch the "
                  "database file", file=sys.stderr)
            return 0
        try:
            await Catalog(engine).get(table)
        except NotFound as exc:
            print(f"exporter follow: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        statements = install_statements(table) if action == "install" \
            else uninstall_statements(table)
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()
    done = "now tells" if action == "install" else "no longer tells"
    print(f"exporter follow: {table!r} {done} live streams of its new rows", file=sys.stderr)
    return 0


async def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.seed import NotTheDemo, SeedMismatch, SeedPlan, seed_database

    plan = SeedPlan(
        users=args.users,
        seed=args.seed,
        images=args.images,
        large_file_bytes=int(args.large_file_mb * 1024 * 1024),
        reset=args.reset,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = _engine(settings)
    try:
        await seed_database(engine, settings.data_dir, plan)
    except (SeedMismatch, NotTheDemo) as exc:
        print(f"exporter seed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await engine.dispose()
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    pairs = [(name, getattr(args, name)) for name in NAMED_PARAMETERS
             if getattr(args, name) is not None]
    for item in args.where:
        name, equals, value = item.partition("=")
        if not equals:
            print(f"exporter export: --where {item!r} is not NAME=VALUE", file=sys.stderr)
            return EXIT_USAGE
        pairs.append((name, value))
    if args.format not in FORMATS:
        print(f"exporter export: --format {args.format!r} is not a format; valid: "
              f"{', '.join(sorted(FORMATS))}", file=sys.stderr)
        return EXIT_USAGE
    fmt = FORMATS[args.format]
    target = None if args.out == "-" else Path(args.out)
    if target is not None and (target.is_dir() or not target.parent.is_dir()):
        print(f"exporter export: --out {args.out!r} is not a file in an existing directory",
              file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_write_export(settings, args.table, pairs, fmt, target))


async def _write_export(
    settings: Settings, table_name: str, pairs: list[tuple[str, str]], fmt: type[Format],
    target: Path | None,
) -> int:
    """The export to ``target`` (by the jobs' atomic writer: a failed export leaves no file
    there), or to standard output."""
    engine = _engine(settings)
    try:
        try:
            table = await Catalog.from_settings(engine, settings).get(table_name)
            query = parse_query(table, pairs)
        except (InvalidParameter, NotFound) as exc:
            prefix = "--" if isinstance(exc, InvalidParameter) else "--table: "
            print(f"exporter export: {prefix}{exc.message}", file=sys.stderr)
            return EXIT_USAGE
        chunks = open_export(engine, query, fmt, settings)
        try:
            if target is None:
                await _write_stdout(chunks)
            else:
                await write_file(target, chunks)
        except Exception as exc:  # reported in a line, not a traceback
            print(f"exporter export: failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        await engine.dispose()
    return 0


async def _write_stdout(chunks: ChunkStream) -> None:
    async with aclosing(chunks) as source:
        async for chunk in source:
            sys.stdout.buffer.write(chunk)
