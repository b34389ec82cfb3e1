"""The ``exporter`` command: its options, and the module that runs each one.

Only the parser lives here, so that ``exporter pull``, a client, starts without importing
the service (SQLAlchemy, FastAPI, pydantic: 0.3 s of a pull's start): the service's
commands are in commands.py, the pull in pull.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from exporter.client import API_KEY_VARIABLE, Retry  # httpx and the standard library only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exporter", description="Stream big tables out as CSV, TSV, NDJSON, JSON and Parquet."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service under uvicorn")
    serve.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default: loopback); another needs EXPORTER_API_KEYS, or "
             "EXPORTER_ALLOW_OPEN=true",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")

    commands.add_parser(
        "worker", help="run export jobs and schedules, without HTTP (until SIGTERM or SIGINT)"
    )

    commands.add_parser(
        "migrate", help="create or update the service's own state (schema exporter); the "
        "user's tables are left alone"
    )

    seed = commands.add_parser(
        "seed", help="migrate, create the demo's tables (users, images) and fill them with "
        "deterministic users and files; a populated database gets back the files it lost"
    )
    seed.add_argument("--users", type=int, default=1_000_000, help="users (default 1000000)")
    seed.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    seed.add_argument("--images", type=int, default=20, help="avatar images (default 20)")
    seed.add_argument(
        "--large-file-mb", type=float, default=256, help="size of files/large-file.bin in MiB"
    )
    seed.add_argument(
        "--reset", action="store_true", help="replace existing users instead of leaving them"
    )

    export = commands.add_parser("export", help="write an export without HTTP")
    export.add_argument("--table", default="users", help="table or view (default users)")
    export.add_argument("--format", required=True,
                        help="csv, tsv, ndjson, json or parquet (any format the service has)")
    export.add_argument("--out", default="-", help="file to write, or - for stdout (default)")
    for name in NAMED_PARAMETERS:
        export.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE",
                            help=f"as the {name}= query parameter")
    export.add_argument(
        "--where", action="append", default=[], metavar="NAME=VALUE",
        help="any other query parameter, e.g. --where 'created_at__gte=2024-01-01' "
             "(repeatable)",
    )
    follow = commands.add_parser(
        "follow", help="PostgreSQL: install (or uninstall) the trigger that tells live streams "
        "of TABLE about new rows at once (NOTIFY); without it they look every "
        "EXPORTER_FOLLOW_POLL_SECONDS. SQLite needs none.",
    )
    follow.add_argument("action", choices=("install", "uninstall"))
    follow.add_argument("table", help="a table of the database, as GET /tables names it")

    pull = commands.add_parser(
        "pull", help="download an export (NDJSON, CSV) or a job's file over HTTP into a file, "
        "resuming by itself; exit 0 done, 1 failed, 2 bad usage",
    )
    pull.add_argument("url", nargs="?", help="an export's URL, e.g. "
                      "http://127.0.0.1:8000/exports/users.ndjson?country=DE, or a job's "
                      "(http://.../jobs/<id>)")
    pull.add_argument("--job", metavar="ID", help="a job's id, on --server")
    pull.add_argument("--server", default="http://127.0.0.1:8000",
                      help="the service, for --job (default http://127.0.0.1:8000)")
    pull.add_argument("-o", "--out", type=Path, help="file to write (default: <table>.<format> "
                      "for an export, the job's file name for a job); FILE.part meanwhile")
    pull.add_argument("--api-key", help=f"default: ${API_KEY_VARIABLE}")
    pull.add_argument("--attempts", type=int, default=Retry.attempts,
                      help=f"failures in a row before giving up (default {Retry.attempts})")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# Options of their own; any other parameter goes through --where.
NAMED_PARAMETERS = ("fields", "limit", "after", "after_id", "country", "plan", "is_active",
                    "created_from", "created_to")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pull":  # a client: the service's modules and settings are not needed
        from exporter.pull import run_pull

        return run_pull(args)
    from exporter.commands import run

    return run(args)
