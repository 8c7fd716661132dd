"""Offline mock LLM provider speaking the OpenAI Chat Completions wire format.

Reading guide: ``behaviour.py`` decides what a request gets (pure, chosen by the model
name), ``wire.py`` renders that decision as OpenAI JSON (pure), ``server.py`` is the thin
aiohttp adapter that sleeps, writes and counts. ``tollway mock-provider``
starts it from a shell.
"""
