"""What a cached answer is keyed by, and which requests may use the cache. Pure.

Exact key: SHA-256 of the canonical request, i.e. the JSON of every field that can
change the answer, with sorted keys, no whitespace, integral floats written as
integers (`1.0` == `1`), one-text-part contents written as plain strings, and the
model replaced by the name the router actually routes (after the team's/key's
alias). Fields that never change the answer are left out: `user`, `stream`,
`stream_options`, `metadata`, `store`, `service_tier`, `prompt_cache_key`,
`safety_identifier`. The key is scoped: `team:<id>`, or `group:<name>` for teams that
a policy explicitly puts in one sharing group; team B never reads team A's scope.

Semantic key: the embedding of the prompt text (system prompt(s) plus the last user
turn by default; `last_user` embeds the last user turn only and matches the system
prompt exactly) within a scope of (team scope, model, hash of every other parameter,
hash of the rest of the conversation). So only the embedded text may differ between a
request and the entry it matches; everything else is equal.

Who may use the cache (`decide`):
- `Cache-Control: no-store` on the request: neither read nor written.
- `Cache-Control: no-cache`: not read (a fresh answer), but the answer is stored.
- a key that opted out (`opted_out_keys`; per-key config from the tenancy topics later).
- `web_search_options`: live answers are never cached.
- semantic only with temperature <= `semantic_max_temperature` (absent = 1.0, the
  providers' default), no tools (unless allowed), text-only content, and a prompt that
  fits the embedding model without truncation; and only between prompts that name the
  same numbers (`number_signature`, part of the semantic scope) and do not hold the
  same content words in another order (`word_order_guard`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

CACHE_STATUS_KEY: Final = "tollway.cache"
"""Result metadata key: `hit`, `semantic-hit` or `miss` (absent: the cache is off)."""
CACHE_CONTROL_KEY: Final = "tollway.cache_control"
"""Envelope metadata key set by the ingress: `no-store` or `no-cache`."""
CACHE_HEADER: Final = "x-tollway-cache"
"""Response header carrying `CACHE_STATUS_KEY`."""

IGNORED_FIELDS: Final = frozenset(
    {
        "model",  # replaced by the routed model name
        "user",
        "stream",
        "stream_options",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)
"""Request fields that do not change the answer (never part of a key)."""
UNCACHEABLE_FIELDS: Final = frozenset({"web_search_options"})
"""A request with any of these is answered live every time."""
TOOL_FIELDS: Final = frozenset({"tools", "tool_choice", "functions", "function_call"})
DEFAULT_TEMPERATURE: Final = 1.0
"""The temperature providers use when the request sets none."""

_CARDINALS: Final = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS: Final = {w: str(i) for i, w in enumerate(_CARDINALS.split(" "))} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "first": "1st",
    "second": "2nd",
    "third": "3rd",
    "fourth": "4th",
    "fifth": "5th",
    "half": "1/2",
    "double": "x2",
    "twice": "x2",
    "triple": "x3",
}
_ROMAN: Final = frozenset(["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"])
_NUMBERS: Final = re.compile(r"\d+(?:[.,:/]\d+)*|\b[a-zA-Z]+\b")

SemanticText = Literal["system_and_last_user", "last_user"]


def cache_control_metadata(header: str | None) -> dict[str, str]:
    """Envelope metadata for a request's `Cache-Control` header (`no-store` wins)."""
    if not header:
        return {}
    directives = {part.strip().split("=", 1)[0].lower() for part in header.split(",")}
    if "no-store" in directives:
        return {CACHE_CONTROL_KEY: "no-store"}
    if "no-cache" in directives:
        return {CACHE_CONTROL_KEY: "no-cache"}
    return {}


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The cache's rules, parsed once from the settings (workers/cache/settings.py)."""

    ttl_s: int = 3_600
    semantic: bool = True
    semantic_threshold: float = 0.90
    semantic_max_temperature: float = 0.3
    semantic_allow_tools: bool = False
    semantic_text: SemanticText = "system_and_last_user"
    semantic_numbers_must_match: bool = True
    """Only prompts naming the same numbers are compared (`number_signature`)."""
    share_groups: Mapping[str, str] = field(default_factory=dict)
    """team id -> sharing group: teams of one group read and write one scope."""
    opted_out_keys: frozenset[str] = frozenset()
    max_entry_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class Decision:
    """What the cache may do for one request."""

    read: bool
    """Look for a stored answer (exact, then semantic when `semantic_text` is set)."""
    write: bool
    """Store the provider's answer."""
    scope: str
    key: str
    """`<scope>/<sha256 hex>`: the exact entry's key (also the Kafka record key)."""
    model: str
    semantic_scope: str | None = None
    """`<scope>/<sha256 hex>` of model, parameters and conversation context; None: no
    semantic lookup or indexing for this request."""
    semantic_text: str | None = None
    semantic_guard: str | None = None
    """`word_order_guard` of `semantic_text`, checked against a match's."""


NO_CACHE: Final = Decision(read=False, write=False, scope="", key="", model="")


def scope_of(team_id: str, share_groups: Mapping[str, str]) -> str:
    group = share_groups.get(team_id)
    return f"group:{group}" if group is not None else f"team:{team_id}"


def _normal(value: Any) -> Any:
    """JSON value with integral floats as ints (1.0 and 1 are the same number)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _normal_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return _normal(message)
    content = message.get("content")
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") == "text"
        and set(content[0]) == {"type", "text"}
    ):
        message = {**message, "content": content[0]["text"]}
    return _normal(message)


def canonical_request(request: Mapping[str, Any], model: str) -> bytes:
    """The bytes the exact key hashes: every answer-changing field, canonically."""
    canon = {k: _normal(v) for k, v in request.items() if k not in IGNORED_FIELDS}
    canon["messages"] = [_normal_message(m) for m in request.get("messages") or ()]
    canon["model"] = model
    return orjson.dumps(canon, option=orjson.OPT_SORT_KEYS)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exact_key(request: Mapping[str, Any], model: str, scope: str) -> str:
    return f"{scope}/{_sha256(canonical_request(request, model))}"


def _text_of(message: Mapping[str, Any]) -> str | None:
    """The message's text; None when it holds anything but text (images, audio)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            texts.append(str(part.get("text") or ""))
        return "\n".join(texts)
    return None


def semantic_split(messages: Sequence[Any], mode: SemanticText) -> tuple[str, list[Any]] | None:
    """(the text to embed, the messages that must match exactly), or None when the
    conversation has no text-only last user turn to compare."""
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if _role(messages[i]) == "user"), None
    )
    if last_user is None:
        return None
    user_text = _text_of(messages[last_user])
    if user_text is None or not user_text.strip():
        return None
    embedded = [last_user]
    if mode == "system_and_last_user":
        embedded = [i for i, m in enumerate(messages) if _role(m) in ("system", "developer")]
        embedded.append(last_user)
    texts: list[str] = []
    for i in embedded:
        text = _text_of(messages[i])
        if text is None:
            return None
        texts.append(text)
    rest = [_normal_message(m) for i, m in enumerate(messages) if i not in embedded]
    return "\n".join(texts), rest


def number_signature(text: str) -> str:
    """The numbers a text names (digits, number words, roman numerals II-XII), sorted.

    Sentence embeddings barely tell "12 times 12" from "12 times 13" (0.91 cosine with
    all-MiniLM-L6-v2) although the answers differ: prompts are compared semantically
    only when they name the same numbers (docs/decisions/0017)."""
    found: list[str] = []
    for token in _NUMBERS.findall(text):
        if token[0].isdigit():
            found.append(token.replace(",", ""))
        elif token in _ROMAN:
            found.append(token)
        elif (word := _NUMBER_WORDS.get(token.lower())) is not None:
            found.append(word)
    return ",".join(sorted(found))


_STOPWORDS: Final = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "in",
        "on",
        "for",
        "and",
        "or",
        "is",
        "are",
        "be",
        "can",
        "could",
        "would",
        "should",
        "do",
        "does",
        "how",
        "what",
        "which",
        "who",
        "whom",
        "why",
        "when",
        "where",
        "me",
        "my",
        "i",
        "you",
        "your",
        "it",
        "its",
        "this",
        "that",
        "with",
        "by",
        "from",
        "at",
        "as",
        "please",
        "some",
        "any",
    ]
)
_WORDS: Final = re.compile(r"\w+")


def word_order_guard(text: str) -> str:
    """`<bag>:<order>` hashes of the text's content words (stopwords left out).

    Two prompts with the same content words in another order ("convert a string to an
    integer" / "convert an integer to a string") embed almost identically (0.996) but
    ask the opposite: a semantic match between them is refused (`guard_refuses`)."""
    words = [w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS]
    bag = hashlib.sha256(" ".join(sorted(words)).encode()).hexdigest()[:16]
    order = hashlib.sha256(" ".join(words).encode()).hexdigest()[:16]
    return f"{bag}:{order}"


def guard_refuses(query: str | None, stored: str | None) -> bool:
    """Same content words, another order: not the same request."""
    if query is None or stored is None:
        return False
    q_bag, _, q_order = query.partition(":")
    s_bag, _, s_order = stored.partition(":")
    return q_bag == s_bag and q_order != s_order


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, dict) else None


def _temperature(request: Mapping[str, Any]) -> float:
    value = request.get("temperature")
    return float(value) if isinstance(value, int | float) else DEFAULT_TEMPERATURE


def semantic_scope(
    request: Mapping[str, Any], model: str, scope: str, policy: CachePolicy
) -> tuple[str, str] | None:
    """(semantic scope key, text to embed) when the request may match semantically."""
    if _temperature(request) > policy.semantic_max_temperature:
        return None
    if not policy.semantic_allow_tools and any(request.get(f) for f in TOOL_FIELDS):
        return None
    split = semantic_split(request.get("messages") or [], policy.semantic_text)
    if split is None:
        return None
    text, rest = split
    params = {k: _normal(v) for k, v in request.items() if k not in IGNORED_FIELDS}
    params.pop("messages", None)
    params["model"] = model
    params["context"] = rest
    params["semantic_text"] = policy.semantic_text
    if policy.semantic_numbers_must_match:
        params["numbers"] = number_signature(text)
    return f"{scope}/{_sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS))}", text


def decide(
    request: Mapping[str, Any],
    *,
    team_id: str,
    key_id: str | None,
    model: str,
    metadata: Mapping[str, str],
    policy: CachePolicy,
) -> Decision:
    """What the cache may do for this chat request (`model`: the routed name)."""
    control = metadata.get(CACHE_CONTROL_KEY)
    if control == "no-store" or (key_id is not None and key_id in policy.opted_out_keys):
        return NO_CACHE
    if any(f in request for f in UNCACHEABLE_FIELDS):
        return NO_CACHE
    scope = scope_of(team_id, policy.share_groups)
    read = control != "no-cache"
    semantic = semantic_scope(request, model, scope, policy) if policy.semantic else None
    return Decision(
        read=read,
        write=True,
        scope=scope,
        key=exact_key(request, model, scope),
        model=model,
        semantic_scope=semantic[0] if semantic else None,
        semantic_text=semantic[1] if semantic else None,
        semantic_guard=word_order_guard(semantic[1]) if semantic else None,
    )
