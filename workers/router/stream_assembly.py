"""Fold streamed chat.completion.chunk objects into one chat.completion. Pure.

The client of a streamed request receives the chunks; the durable record
(`tollway.results`, analytics, `GET /v1/async/requests/{id}`) keeps the whole
answer, assembled here: content and refusal text concatenated per choice,
tool-call fragments merged by index (arguments concatenated), the last
finish_reason per choice, and the usage chunk when the provider sent one.
"""

from __future__ import annotations

from typing import Any


class StreamAssembler:
    def __init__(self) -> None:
        self._id = ""
        self._model = ""
        self._created = 0
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self._id = self._id or str(chunk.get("id") or "")
        self._model = self._model or str(chunk.get("model") or "")
        self._created = self._created or int(chunk.get("created") or 0)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index") or 0)
        state = self._choices.setdefault(
            index, {"content": [], "refusal": [], "tools": {}, "finish_reason": None, "role": None}
        )
        delta = choice.get("delta") or {}
        state["role"] = state["role"] or delta.get("role")
        if delta.get("content"):
            state["content"].append(delta["content"])
        if delta.get("refusal"):
            state["refusal"].append(delta["refusal"])
        for call in delta.get("tool_calls") or ():
            slot = state["tools"].setdefault(
                int(call.get("index") or 0),
                {"id": None, "type": "function", "name": [], "arguments": []},
            )
            slot["id"] = slot["id"] or call.get("id")
            function = call.get("function") or {}
            if function.get("name"):
                slot["name"].append(function["name"])
            if function.get("arguments"):
                slot["arguments"].append(function["arguments"])
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"] or "assistant",
                "content": "".join(state["content"]) if state["content"] else None,
            }
            if state["refusal"]:
                message["refusal"] = "".join(state["refusal"])
            if state["tools"]:
                message["tool_calls"] = [
                    {
                        "id": slot["id"],
                        "type": slot["type"],
                        "function": {
                            "name": "".join(slot["name"]),
                            "arguments": "".join(slot["arguments"]),
                        },
                    }
                    for _, slot in sorted(state["tools"].items())
                ]
            choices.append(
                {"index": index, "message": message, "finish_reason": state["finish_reason"]}
            )
        body: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body
