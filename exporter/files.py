"""File bodies and their headers. So far: Content-Disposition, shared with the exports."""

from __future__ import annotations

import re
from urllib.parse import quote

UNSAFE_IN_QUOTED = re.compile(r'[^\x20-\x7e]|["\\%]')


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266 with an ASCII ``filename`` fallback and an RFC 8187 ``filename*``."""
    fallback = UNSAFE_IN_QUOTED.sub("_", filename)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
