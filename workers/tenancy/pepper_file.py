"""The local stack's key pepper: created once, owner-only, read back on every `tollway up`.

`tollway up` sets `TOLLWAY_KEY_PEPPER` from `<state dir>/key-pepper` unless the
variable is already set. The file is created with O_EXCL at mode 0600 (never readable
by another user, not even for a moment) and never replaced: a new pepper would
invalidate every virtual key issued so far (their digests would no longer match).
In production set `TOLLWAY_KEY_PEPPER` from your secret store instead, the same value
on every ingress, router and admin replica.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from workers.tenancy.keys import Pepper, new_pepper

FILE_NAME: Final = "key-pepper"


def ensure_pepper_file(path: Path) -> str:
    """The pepper in `path`, creating the file with a fresh one first if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text("ascii").strip()
        Pepper(text)  # refuse a truncated or hand-broken file loudly
        return text
    text = new_pepper()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text + "\n")
    return text
