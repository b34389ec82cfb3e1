# The exporter service: `exporter serve` by default; compose also runs `exporter seed` from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --uid 10001 --user-group exporter

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that editing the code reuses this layer.
COPY pyproject.toml README.md ./
# With the s3 extra: job files in an S3-compatible bucket (docker-compose.yml uses one).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY exporter ./exporter
COPY migrations ./migrations
COPY seed ./seed
# The sources go once installed: `python -m exporter` run in /app would otherwise import
# ./exporter, which has no exporter.migrations or exporter.seed (they install from
# migrations/ and seed/), instead of the installed package.
# g++ and SQLite's headers build SQLite's rendering functions in C++ (without them the
# package installs all the same and renders slower); removed once built. The
# check imports the installed module (-P: not ./exporter, where no module was built).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libsqlite3-dev \
    && pip install --no-cache-dir ".[s3]" \
    && python -P -c "import exporter._sqlite_functions" \
    && apt-get purge -y --auto-remove g++ libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/* exporter migrations seed build \
    && mkdir -p /data \
    && chown exporter:exporter /data

ENV EXPORTER_DATA_DIR=/data
USER exporter
EXPOSE 8000

# All interfaces, or the published port reaches nothing; so the service starts only with
# EXPORTER_API_KEYS set, or with EXPORTER_ALLOW_OPEN=true where the port is published on the
# host's loopback alone (docker-compose.yml does that).
CMD ["exporter", "serve", "--host", "0.0.0.0", "--port", "8000"]
