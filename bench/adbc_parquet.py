"""The Parquet contender: ADBC's SQLite driver reads a table into Arrow in C, pyarrow's
ParquetWriter writes it (zstd), no HTTP. Run in its own venv (bench/.venv-adbc); prints the
seconds from connecting to the file's close (its imports left out), then the rows written.

    python bench/adbc_parquet.py DB TABLE OUT
"""

from __future__ import annotations

import sys
import time

import adbc_driver_sqlite.dbapi as adbc
import pyarrow.parquet as pq


def main(database: str, table: str, out: str) -> None:
    started = time.perf_counter()
    rows = 0
    with adbc.connect(database) as conn, conn.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        reader = cursor.fetch_record_batch()
        with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    print(f"{time.perf_counter() - started:.4f} {rows}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
