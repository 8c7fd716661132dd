"""Which endpoints get which events, and with which secrets. Pure (config model).

    teams:
      default:
        secrets: ["whsec_..."]           # the first signs; a second during rotation
        endpoints:
          - id: ops
            url: https://hooks.example.com/tollway
            events: ["batch.*", "budget.*"]

Per-request `callback_url`s (async requests) are signed with their team's
secrets. Secrets stay in this file (or the environment), never on a topic.
An endpoint is identified on topics by its key: `<team>/<id>` for configured
endpoints, `<team>/url/<hash of the URL>` for callback URLs.
"""

from __future__ import annotations

import fnmatch
import hashlib

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from workers.callbacks.signing import secret_key


class Endpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str
    events: tuple[str, ...] = ("*",)

    def wants(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


class TeamWebhooks(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    secrets: tuple[SecretStr, ...] = Field(min_length=1, max_length=2)
    endpoints: tuple[Endpoint, ...] = ()

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for secret in value:
            secret_key(secret.get_secret_value())  # raises InvalidSecret (a ValueError)
        return value

    def keys(self) -> list[bytes]:
        return [secret_key(s.get_secret_value()) for s in self.secrets]


class WebhooksConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    teams: dict[str, TeamWebhooks] = {}

    def team(self, team_id: str) -> TeamWebhooks | None:
        return self.teams.get(team_id)


def endpoint_key(team_id: str, endpoint_id: str) -> str:
    return f"{team_id}/{endpoint_id}"


def url_key(team_id: str, url: str) -> str:
    return f"{team_id}/url/{hashlib.sha256(url.encode()).hexdigest()[:24]}"
