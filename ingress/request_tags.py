"""End-user ids and tags that applications pass along with a request. Pure.

    x-tollway-end-user: <id>        or the body's `user` field (OpenAI's); the header wins
    x-tollway-tags: a,b,c           plus the body's `metadata.tags` and the key's own tags

Both travel in the request envelope's metadata, where the loader (analytics/loader/rows.py)
and the budget processor read them: `tags` (comma-separated, the loader's existing
convention) and `tollway.end_user` (reserved prefix: a client's own metadata cannot set it).

Validation is strict so a header cannot smuggle anything into a topic, a ClickHouse row
or a log line: a tag is 1-64 characters of `[A-Za-z0-9._:-]` starting with a letter or
digit, at most `MAX_TAGS` per request; an end-user id is 1-`MAX_END_USER_CHARS`
printable characters. A violation is a 400 that names the header or field, never
its value.

Tags can only narrow what a request may do: every tag's policy applies on top of the
team's and the key's (ingress/governance.py), so adding a tag never widens access.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from schemas.errors import InvalidRequest

END_USER_HEADER: Final = "x-tollway-end-user"
TAGS_HEADER: Final = "x-tollway-tags"
TAGS_METADATA_KEY: Final = "tags"
END_USER_METADATA_KEY: Final = "tollway.end_user"
MAX_TAGS: Final = 16
MAX_TAG_CHARS: Final = 64
MAX_END_USER_CHARS: Final = 256
MAX_TAGS_HEADER_CHARS: Final = MAX_TAGS * (MAX_TAG_CHARS + 1)
TAG_RE: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_TAG_CHARS - 1}}}")


def parse_tags(raw: str | None, *, param: str) -> tuple[str, ...]:
    """The tags of a comma-separated list (blank items skipped), sorted, without repeats.

    Raises `InvalidRequest(param=param)` for a malformed tag or too many of them."""
    if raw is None:
        return ()
    if len(raw) > MAX_TAGS_HEADER_CHARS:
        raise InvalidRequest(
            f"{param} is longer than {MAX_TAGS_HEADER_CHARS} characters.", param=param
        )
    tags = {item.strip() for item in raw.split(",") if item.strip()}
    if any(not TAG_RE.fullmatch(tag) for tag in tags):
        raise InvalidRequest(
            f"{param}: a tag is 1-{MAX_TAG_CHARS} characters of letters, digits and . _ : - "
            "(starting with a letter or digit), separated by commas.",
            param=param,
        )
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"{param}: at most {MAX_TAGS} tags per request.", param=param)
    return tuple(sorted(tags))


def parse_end_user(raw: str | None, *, param: str) -> str | None:
    """A checked end-user id, or None when absent. Raises `InvalidRequest(param=param)`."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_END_USER_CHARS or not raw.isprintable() or not raw.strip():
        raise InvalidRequest(
            f"{param} must be 1 to {MAX_END_USER_CHARS} printable characters.", param=param
        )
    return raw


def merged_tags(*groups: Iterable[str]) -> tuple[str, ...]:
    """Every tag of every group, sorted, without repeats; at most `MAX_TAGS` in all."""
    tags = sorted({tag for group in groups for tag in group})
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(
            f"At most {MAX_TAGS} tags per request (the key's, {TAGS_HEADER} and metadata.tags "
            "together).",
            param=TAGS_HEADER,
        )
    return tuple(tags)
