"""The strict spellings of tenancy's identifiers and labels. Pure.

Every id that reaches the config topics, an audit record, a log line or a URL path
is checked against one of these patterns first, so nothing that is not a plain
ASCII token travels further (no quotes, spaces, slashes, control characters or
non-ASCII look-alikes). Checks use `fullmatch` (a `$` would accept a trailing
newline).

    team id      acme, team-42, ml.research      1-64 of [A-Za-z0-9._-], first alphanumeric
    key id       key_0123456789abcdef             `key_` + 16 lowercase hex (keys.py makes them)
    tag          support-bot                      like a team id
    model        gpt-4o-mini, mock-*, org/model   1-128 of [A-Za-z0-9._:/@+*-], first alphanumeric
    metadata     keys like a tag; values 0-256 printable characters
    actor        ops@example.com                  1-64 of [A-Za-z0-9._@+-] (who changed config)

Team ids exclude `:` and `/` on purpose: budget scopes (`team:<id>`) and idempotency
keys (`<team>/<key>`) embed them.
"""

from __future__ import annotations

import re
from typing import Final

TEAM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
KEY_ID: Final = re.compile(r"key_[0-9a-f]{16}", re.ASCII)
TAG: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MODEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+*-]{0,127}", re.ASCII)
METADATA_KEY: Final = TAG
ACTOR: Final = re.compile(r"[A-Za-z0-9._@+-]{1,64}", re.ASCII)
KEY_DIGEST: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)

MAX_METADATA_ENTRIES: Final = 32
MAX_METADATA_VALUE_CHARS: Final = 256
MAX_LIST_ITEMS: Final = 256
"""Most tags or allowed models one key, team or policy may carry."""

# The same patterns as strings, for pydantic `Field(pattern=...)` (anchored there).
TEAM_ID_PATTERN: Final = rf"^{TEAM_ID.pattern}$"
KEY_ID_PATTERN: Final = rf"^{KEY_ID.pattern}$"
TAG_PATTERN: Final = rf"^{TAG.pattern}$"
MODEL_PATTERN: Final = rf"^{MODEL.pattern}$"
KEY_DIGEST_PATTERN: Final = rf"^{KEY_DIGEST.pattern}$"


def is_team_id(text: str) -> bool:
    return TEAM_ID.fullmatch(text) is not None


def is_key_id(text: str) -> bool:
    return KEY_ID.fullmatch(text) is not None


def is_tag(text: str) -> bool:
    return TAG.fullmatch(text) is not None


def is_model(text: str) -> bool:
    return MODEL.fullmatch(text) is not None


def is_actor(text: str) -> bool:
    return ACTOR.fullmatch(text) is not None


def is_metadata_value(text: str) -> bool:
    return len(text) <= MAX_METADATA_VALUE_CHARS and text.isprintable()
