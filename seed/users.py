"""Deterministic, realistic and deliberately hostile user rows.

``generate_users(n, seed)`` yields the same ``SeedUser`` tuples for the same arguments on
every machine: its numbers are those of ``random.Random`` methods whose output CPython
keeps stable (``random``, ``randrange``, ``choice``), and its timestamps are whole-second
UTC times so that every backend stores exactly what was generated.

``draw_users`` is the same rows before their storage types (cents, seconds): a backend
that stores text (SQLite) need never build a ``Decimal`` or a ``datetime``, which cost
more than drawing the row.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
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
LAST_LOGIN_SPAN_SECONDS = 300 * 86400  # after created_at
MAX_CENTS = 100_000_000  # exclusive


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


# A SeedUser with lifetime_value in cents and both timestamps in seconds since EPOCH.
DrawnUser = tuple[
    int, str, str, str, str | None, str, bool, int, int, int | None, str | None, int | None
]
# rng.randrange(n) for one n, as a call without arguments.
Die = Callable[[], int]


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded.lower() if c.isalnum()) or "user"


FIRST_SLUGS = tuple(map(_ascii_slug, FIRST_NAMES))
LAST_SLUGS = tuple(map(_ascii_slug, LAST_NAMES))
CITIES = tuple(COUNTRY_CITIES[country] for country in COUNTRIES)
PLAN_BY_PERCENT = tuple(plan for plan, weight in PLAN_WEIGHTS for _ in range(weight))
assert len(PLAN_BY_PERCENT) == 100, "plan weights must add up to 100"


def _die(rng: random.Random, faces: int) -> Die:
    """``rng.randrange(faces)``, drawing the very same numbers from the same stream.

    CPython's ``randrange(n)`` and ``choice(seq)`` (with n = len(seq)) both come down to
    ``_randbelow(n)``: getrandbits(n.bit_length()) until the result is below n. Doing just
    that skips their argument checks, which cost more than the draw itself.
    tests/test_seed.py holds ``draw_users`` to a copy written with randrange and choice.
    """
    bits = faces.bit_length()
    getrandbits = rng.getrandbits

    def roll() -> int:
        number = getrandbits(bits)
        while number >= faces:
            number = getrandbits(bits)
        return number

    return roll


def draw_users(count: int, seed: int, image_count: int) -> Iterator[DrawnUser]:
    rng = random.Random(seed)
    d2, d5, d10, d20, d100 = (_die(rng, faces) for faces in (2, 5, 10, 20, 100))
    whole_name = _die(rng, len(WHOLE_NAMES))
    first_name, last_name = _die(rng, len(FIRST_NAMES)), _die(rng, len(LAST_NAMES))
    country_of = _die(rng, len(COUNTRIES))
    city_in = tuple(_die(rng, len(cities)) for cities in CITIES)
    domain = _die(rng, len(DOMAINS))
    bio = _die(rng, len(BIOS))
    # randrange(1, n) is 1 + randrange(n - 1): hence the "- 1"s here and "1 +"s below.
    paid_cents = _die(rng, MAX_CENTS - 1)
    created_second = _die(rng, CREATED_SPAN_SECONDS)
    login_delay = _die(rng, LAST_LOGIN_SPAN_SECONDS - 1)
    avatar = _die(rng, image_count) if image_count else None
    for user_id in range(1, count + 1):
        if d20() == 0:
            full_name = WHOLE_NAMES[whole_name()]
            slug = "user"
        else:
            first, last = first_name(), last_name()
            full_name = f"{FIRST_NAMES[first]} {LAST_NAMES[last]}"
            slug = f"{FIRST_SLUGS[first]}.{LAST_SLUGS[last]}"
        country = country_of()
        city = None if d10() == 0 else CITIES[country][city_in[country]()]
        plan = PLAN_BY_PERCENT[d100()]
        cents = 0 if plan == "free" and d2() else 1 + paid_cents()
        created_at = created_second()
        last_login_at = None if d5() == 0 else created_at + 1 + login_delay()
        yield (
            user_id,
            f"{slug}{user_id}@{DOMAINS[domain()]}",
            full_name,
            COUNTRIES[country],
            city,
            plan,
            d100() < 85,
            cents,
            created_at,
            last_login_at,
            None if d10() < 3 else BIOS[bio()],
            None if avatar is None or d5() < 2 else 1 + avatar(),
        )


def _moment(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def seed_user(drawn: DrawnUser) -> SeedUser:
    """The drawn row with a ``Decimal`` and ``datetime``s, as asyncpg's COPY wants them."""
    (user_id, email, full_name, country, city, plan, is_active, cents, created_at,
     last_login_at, bio, avatar_image_id) = drawn
    return SeedUser(
        user_id, email, full_name, country, city, plan, is_active,
        lifetime_value=Decimal(cents).scaleb(-2),
        created_at=_moment(created_at),
        last_login_at=None if last_login_at is None else _moment(last_login_at),
        bio=bio,
        avatar_image_id=avatar_image_id,
    )


def generate_users(count: int, seed: int, image_count: int) -> Iterator[SeedUser]:
    return map(seed_user, draw_users(count, seed, image_count))
