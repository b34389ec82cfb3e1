"""The export formats, one class each, and the one registry every edge resolves names in.

Adding a format is one module here with one ``Format`` subclass, listed in ``FORMATS``."""

from __future__ import annotations

from exporter.formats.base import Block, Format, Options
from exporter.formats.csv import Csv
from exporter.formats.json import JsonArray
from exporter.formats.ndjson import Ndjson
from exporter.formats.parquet import Parquet
from exporter.formats.tsv import Tsv

FORMATS: dict[str, type[Format]] = {cls.name: cls for cls in (Csv, Tsv, Ndjson, JsonArray, Parquet)}
BY_EXTENSION: dict[str, type[Format]] = {cls.extension: cls for cls in FORMATS.values()}

__all__ = ["BY_EXTENSION", "FORMATS", "Block", "Csv", "Format", "JsonArray", "Ndjson", "Options",
           "Parquet", "Tsv"]

