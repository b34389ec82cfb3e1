"""Deterministic, realistic and deliberately hostile user rows.

``generate_users(n, seed)`` yields the same ``SeedUser`` tuples for the same arguments on
every machine: it uses only ``random.Random`` methods whose output CPython keeps stable
(``random``, ``randrange``, ``choice``), and whole-second UTC timestamps so that every
backend stores exactly what was generated.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import NamedTuple

FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "Dmitri", "Émile", "Fatima", "Günther", "Hana", "Ingrid", "José",
    "Kwame", "Léa", "Mateo", "Nikolaj", "Øyvind", "Priya", "Quentin", "Renée", "Søren", "Tomás",
    "Ulla", "Valentina", "Wei", "Xóchitl", "Yusuf", "Zoë", "Łukasz", "Ångström", "Siobhán", "Noah",
)
LAST_NAMES = (
    "Müller", "O'Brien", "García", "Nguyễn", "Kowalski", "Smith", "Dubois", "Rossi", "Johansson",
    "Yılmaz", "Novák", "Fernández", "Schröder", "Иванова", "Papadopoulos", "Okafor", "Lévesque",
    "D'Angelo", "Çelik", "Þórsson", "van der Berg", "Jones", "Brown", "Taylor", "Kim",
)
# Rows whose whole name is not Latin script, to catch encoders that assume it.
WHOLE_NAMES = (
    "王伟", "佐藤 花子", "김민준", "Αλέξανδρος Παπαδόπουλος", "Дмитрий Иванов", "محمد الأحمد",
    "שרה כהן", "Ngozi 🌍 Okonkwo", "Alex 🚀 Kim", "José 👩🏽‍💻 Núñez", "Zoë \"Zee\" Adams",
)
COUNTRY_CITIES: dict[str, tuple[str, ...]] = {
    "US": ("New York", "San Francisco", "Austin", "Chicago"),
    "DE": ("Berlin", "München", "Köln", "Hamburg"),
    "FR": ("Paris", "Lyon", "Besançon", "Nice"),
    "GB": ("London", "Manchester", "Edinburgh"),
    "JP": ("東京", "大阪", "Kyoto"),
    "BR": ("São Paulo", "Rio de Janeiro", "Belo Horizonte"),
    "IN": ("Mumbai", "Bengaluru", "Delhi"),
    "NG": ("Lagos", "Abuja"),
    "ES": ("Madrid", "A Coruña", "Sevilla"),
    "SE": ("Stockholm", "Göteborg", "Malmö"),
    "CN": ("北京", "上海", "Shenzhen"),
    "CA": ("Toronto", "Montréal", "Vancouver"),
}
COUNTRIES = tuple(COUNTRY_CITIES)
DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example")
PLAN_WEIGHTS = (("free", 70), ("pro", 25), ("enterprise", 5))
BIOS = (
    "Loves data, coffee, and long exports.",
    'Says "hello" to everyone',
    "Line one\r\nLine two",
    "Unix newline\nsecond line",
    "Tab\tseparated\tthoughts",
    'Mixed: "quotes", commas,\r\nand CRLF',
    "  leading and trailing spaces  ",
    "Emoji 🎉🔥 and CJK 数据导出",
    "Backslash \\ and slash /",
    "Only, commas, here",
    '"",""',
    "Ends with a newline\n",
    "Zero-width\u200bjoiner and NBSP\u00a0here",
)
EPOCH = datetime(2015, 1, 1, tzinfo=UTC)
CREATED_SPAN_SECONDS = int((datetime(2026, 1, 1, tzinfo=UTC) - EPOCH).total_seconds())


class SeedUser(NamedTuple):
    id: int
    email: str
    full_name: str
    country: str
    city: str | None
    plan: str
    is_active: bool
    lifetime_value: Decimal
    created_at: datetime
    last_login_at: datetime | None
    bio: str | None
    avatar_image_id: int | None


@cache  # names come from short fixed lists: normalise each once
def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded.lower() if c.isalnum()) or "user"


def _plan(rng: random.Random) -> str:
    roll = rng.randrange(100)
    for plan, weight in PLAN_WEIGHTS:
        if roll < weight:
            return plan
        roll -= weight
    raise AssertionError("plan weights must add up to 100")


def generate_users(count: int, seed: int, image_count: int) -> Iterator[SeedUser]:
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
        plan = _plan(rng)
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
