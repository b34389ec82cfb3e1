"""Real, decodable images and large binary files, written under the data directory.

Bytes depend only on the seed (and the Pillow/zlib build for the images), so a re-seed
writes identical files and the recorded sha256 stays true. That is also how a populated
database gets back images its data directory lost: drawn again, and written only if they
hash to what it records. Every file is written aside, then renamed over its name.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

IMAGE_SIDE = 256
WRITE_CHUNK = 1024 * 1024


class SeedImage(NamedTuple):
    id: int
    filename: str
    content_type: str
    byte_size: int
    sha256: str
    storage_path: str


def _draw(rng: random.Random) -> Image.Image:
    background = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(IMAGE_SIDE), rng.randrange(IMAGE_SIDE)
        x1, y1 = x0 + rng.randrange(8, 96), y0 + rng.randrange(8, 96)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def draw_images(count: int, seed: int) -> Iterator[tuple[SeedImage, bytes]]:
    """Alternate PNG and JPEG avatars, each with its row for the ``images`` table. One
    random stream draws them in id order, so the first k are the same whatever ``count``."""
    rng = random.Random(f"images-{seed}")
    for image_id in range(1, count + 1):
        is_png = image_id % 2 == 1
        filename = f"avatar-{image_id:04d}.{'png' if is_png else 'jpg'}"
        buffer = io.BytesIO()
        _draw(rng).save(buffer, format="PNG" if is_png else "JPEG", quality=85)
        data = buffer.getvalue()
        record = SeedImage(
            id=image_id,
            filename=filename,
            content_type="image/png" if is_png else "image/jpeg",
            byte_size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            storage_path=f"images/{filename}",
        )
        yield record, data


def write_images(images_dir: Path, count: int, seed: int) -> list[SeedImage]:
    """Write the avatars under ``images_dir``; return their rows for the ``images`` table."""
    written = []
    for record, data in draw_images(count, seed):
        write_aside(images_dir / record.filename, data)
        written.append(record)
    return written


def damaged_images(data_dir: Path, recorded: Iterable[SeedImage]) -> list[SeedImage]:
    """The recorded images whose file is missing or does not hash to the recorded sha256."""
    return [record for record in recorded
            if _sha256_of(data_dir / record.storage_path) != record.sha256]


def rewrite_images(
    data_dir: Path, damaged: Iterable[SeedImage], count: int, seed: int
) -> list[SeedImage]:
    """Draw the images again and write each damaged one that comes out exactly as recorded
    (row and sha256); return those that do not: another seed or count drew them."""
    unwritten = {record.id: record for record in damaged}
    if not unwritten:
        return []
    for drawn, data in draw_images(min(count, max(unwritten)), seed):
        if unwritten.get(drawn.id) == drawn:
            write_aside(data_dir / drawn.storage_path, data)
            del unwritten[drawn.id]
    return list(unwritten.values())


def write_aside(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(path)
    partial.write_bytes(data)
    partial.replace(path)


def write_large_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` pseudo-random bytes aside, then rename; return their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"large-{seed}")
    digest = hashlib.sha256()
    partial = _partial(path)
    with partial.open("wb") as out:
        remaining = size
        while remaining:
            block = rng.randbytes(min(WRITE_CHUNK, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    partial.replace(path)
    return digest.hexdigest()


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".part")  # never served: storage.TEMPORARY_SUFFIXES


def _sha256_of(path: Path) -> str | None:
    """The file's sha256, or None if there is no file."""
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None
