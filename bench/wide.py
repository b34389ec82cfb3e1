"""The bench's second table: ``wide``, 33 columns of mixed kinds, made with plain SQL.

The users table is the project's own; ``wide`` stands for a table the service did not
create, so its export goes through the generic path alone (reflection, per-kind
rendering, keyset on its key). Both backends get the same logical rows, generated in the
database itself (a recursive CTE on SQLite, ``generate_series`` on PostgreSQL) so that a
million rows take seconds. Every ``NULL`` pattern, non-ASCII city, quote, comma and line
break below is there on purpose: the renderers' slow paths are part of what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "wide"


@dataclass(frozen=True)
class WideColumn:
    name: str
    sqlite_type: str
    sqlite_value: str  # an expression of the row number ``i``
    pg_type: str
    pg_value: str


CITY = ("CASE i % 6 WHEN 0 THEN 'München' WHEN 1 THEN '東京' WHEN 2 THEN 'São Paulo' "
        "WHEN 3 THEN 'New York, NY' WHEN 4 THEN 'Zoë \"Z\" Town' ELSE 'Austin' END")
STATUS = "CASE i % 3 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' ELSE 'shipped' END"
COUNTRY = "CASE i % 4 WHEN 0 THEN 'DE' WHEN 1 THEN 'JP' WHEN 2 THEN 'BR' ELSE 'US' END"


def _both(name: str, sqlite_type: str, pg_type: str, value: str) -> WideColumn:
    return WideColumn(name, sqlite_type, value, pg_type, value)


COLUMNS = (
    WideColumn("id", "INTEGER PRIMARY KEY", "i", "bigint PRIMARY KEY", "i"),
    _both("account_id", "INTEGER", "integer", "i % 50000"),
    _both("quantity", "INTEGER", "integer", "(i * 7) % 1000"),
    _both("level", "SMALLINT", "smallint", "i % 7"),
    _both("big_counter", "BIGINT", "bigint", "i * 1000003"),
    _both("visits", "INTEGER", "integer", "CASE WHEN i % 9 = 0 THEN NULL ELSE i % 311 END"),
    WideColumn("score", "REAL", "((i * 37) % 100000) / 7.0",
               "double precision", "((i * 37) % 100000) / 7.0::float8"),
    WideColumn("ratio", "DOUBLE", "CASE WHEN i % 5 = 0 THEN NULL ELSE 1.0 / (i % 97 + 1) END",
               "double precision",
               "CASE WHEN i % 5 = 0 THEN NULL ELSE 1.0::float8 / (i % 97 + 1) END"),
    WideColumn("weight", "FLOAT", "(i % 1000) * 0.1", "double precision",
               "(i % 1000) * 0.1::float8"),
    WideColumn("latitude", "REAL", "((i * 7919) % 180000) / 1000.0 - 90",
               "double precision", "((i * 7919) % 180000) / 1000.0::float8 - 90"),
    WideColumn("longitude", "REAL", "((i * 104729) % 360000) / 1000.0 - 180",
               "double precision", "((i * 104729) % 360000) / 1000.0::float8 - 180"),
    WideColumn("price", "NUMERIC(12,2)", "((i * 13) % 100000) / 100.0",
               "numeric(12,2)", "((i * 13) % 100000) / 100.0"),
    WideColumn("discount", "DECIMAL(5,2)", "CASE WHEN i % 4 = 0 THEN NULL ELSE (i % 50) / 4.0 END",
               "numeric(5,2)", "CASE WHEN i % 4 = 0 THEN NULL ELSE (i % 50) / 4.0 END"),
    WideColumn("balance", "NUMERIC(14,4)", "(i % 100000) / 10000.0 - 3",
               "numeric(14,4)", "(i % 100000) / 10000.0 - 3"),
    _both("name", "TEXT", "text", "'customer ' || i"),
    _both("email", "VARCHAR(200)", "varchar(200)", "'user' || i || '@example.com'"),
    _both("city", "TEXT", "text", CITY),
    WideColumn("note", "TEXT", "CASE WHEN i % 100 = 0 THEN 'line one' || char(13, 10) || "
               "'line \"two\", with comma' WHEN i % 3 = 0 THEN NULL ELSE 'ok' END",
               "text", "CASE WHEN i % 100 = 0 THEN 'line one' || chr(13) || chr(10) || "
               "'line \"two\", with comma' WHEN i % 3 = 0 THEN NULL ELSE 'ok' END"),
    _both("status", "TEXT", "text", STATUS),
    _both("country", "CHAR(2)", "char(2)", COUNTRY),
    WideColumn("zip", "TEXT", "printf('%05d', i % 100000)", "text",
               "lpad((i % 100000)::text, 5, '0')"),
    WideColumn("phone", "TEXT", "'+49 30 ' || (1000000 + i)", "text",
               "'+49 30 ' || (1000000 + i)"),
    WideColumn("referrer", "TEXT",
               "CASE WHEN i % 2 = 0 THEN NULL ELSE 'https://example.com/?q=' || (i % 1000) END",
               "text",
               "CASE WHEN i % 2 = 0 THEN NULL ELSE 'https://example.com/?q=' || (i % 1000) END"),
    WideColumn("is_active", "BOOLEAN", "i % 2 = 0", "boolean", "i % 2 = 0"),
    WideColumn("is_vip", "BOOLEAN", "CASE WHEN i % 7 = 0 THEN NULL ELSE i % 10 = 1 END",
               "boolean", "CASE WHEN i % 7 = 0 THEN NULL ELSE i % 10 = 1 END"),
    WideColumn("signup_date", "DATE", "date('2020-01-01', '+' || (i % 2000) || ' days')",
               "date", "date '2020-01-01' + (i % 2000)::int"),
    WideColumn("last_seen", "DATE",
               "CASE WHEN i % 6 = 0 THEN NULL ELSE date('2024-01-01', '+' || (i % 300) || "
               "' days') END",
               "date", "CASE WHEN i % 6 = 0 THEN NULL ELSE date '2024-01-01' + (i % 300)::int "
               "END"),
    WideColumn("created_at", "TIMESTAMP", "datetime('2020-01-01', '+' || i || ' seconds')",
               "timestamptz", "timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'"),
    WideColumn("updated_at", "DATETIME",
               "CASE WHEN i % 8 = 0 THEN NULL ELSE datetime('2024-06-01', '+' || (i * 3) || "
               "' seconds') END", "timestamp",
               "CASE WHEN i % 8 = 0 THEN NULL ELSE timestamp '2024-06-01' + i * 3 * "
               "interval '1 second' END"),
    WideColumn("opens_at", "TIME", "time(i % 86400, 'unixepoch')", "time",
               "time '00:00' + (i % 86400) * interval '1 second'"),
    WideColumn("external_id", "UUID", "printf('%08x-0000-4000-8000-%012x', i, i * 31)", "uuid",
               "(lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i * 31), 12, "
               "'0'))::uuid"),
    WideColumn("attributes", "JSON",
               "'{\"k\": ' || (i % 10) || ', \"tags\": [\"a\", \"b\"]}'", "json",
               "('{\"k\": ' || (i % 10) || ', \"tags\": [\"a\", \"b\"]}')::json"),
    WideColumn("payload", "BLOB", "CAST(printf('%08d', i) AS BLOB)", "bytea",
               "convert_to(lpad(i::text, 8, '0'), 'UTF8')"),
)


def sqlite_script(rows: int) -> str:
    """Create and fill ``wide`` in one SQLite script (``executescript``)."""
    numbers = ("WITH RECURSIVE n(i) AS "
               f"(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {int(rows)})")
    return _script([(c.name, c.sqlite_type, c.sqlite_value) for c in COLUMNS], numbers, "n")


def postgres_script(rows: int) -> str:
    """Create and fill ``wide`` in one PostgreSQL script (``psql -c``)."""
    source = f"generate_series(1, {int(rows)}::bigint) AS n(i)"
    return _script([(c.name, c.pg_type, c.pg_value) for c in COLUMNS], "", source)


def _script(columns: list[tuple[str, str, str]], prefix: str, source: str) -> str:
    """DROP, CREATE and one INSERT ... SELECT of every row number ``i`` from ``source``."""
    declared = ",\n  ".join(f"{name} {type_}" for name, type_, _ in columns)
    values = ",\n  ".join(value for _, _, value in columns)
    return f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
  {declared}
);
{prefix}
INSERT INTO {TABLE} SELECT
  {values}
FROM {source};
ANALYZE {TABLE};
"""
