"""The local stack's webhooks file: created once, owner-only, with a fresh signing secret.

`tollway up` (deploy/stack.py) points the dispatcher at `<state dir>/webhooks.yaml`
(`TOLLWAY_CALLBACKS_WEBHOOKS_FILE`, unless that is already set). Without a file the
dispatcher knows no team secret, so every delivery (callback_url included) would be
dead-lettered as unsigned. The file is written once (mode 0600, never overwritten: it
holds the secret your receivers verify with) and is then the operator's to edit:
add endpoints under `teams.default.endpoints` and restart the stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from workers.callbacks.signing import new_secret

FILE_NAME: Final = "webhooks.yaml"

_TEMPLATE: Final = """\
# Tollway webhooks (workers/callbacks/endpoints.py), generated once by `tollway up`.
# Keep this file private (mode 0600): the secret signs every webhook (Standard Webhooks)
# and your receivers verify with it. To rotate, add a second secret, move receivers over,
# then remove the old one (the first secret signs; both are sent during the rotation).
#
# Batch and budget events go to the endpoints listed here; async requests with a
# `callback_url` are signed with the same secret. Add endpoints, then restart the stack:
#
#   endpoints:
#     - {{id: ops, url: "https://hooks.example.com/tollway", events: ["batch.*", "budget.*"]}}
#
# Only public https addresses are called. For a receiver on this machine (development
# only), start the stack with
#   TOLLWAY_CALLBACKS_ALLOW_HTTP=true TOLLWAY_CALLBACKS_ALLOW_NETWORKS='["127.0.0.0/8"]'
teams:
  default:
    secrets: ["{secret}"]
    endpoints: []
"""


def ensure_webhooks_file(path: Path) -> bool:
    """Create `path` with a new secret unless it exists; True when it was created.

    Created with O_EXCL at mode 0600, so an existing file (and its secret) is never
    replaced and the secret is never readable by other users, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_TEMPLATE.format(secret=new_secret()))
    return True
