"""Offline mock LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.

Reading guide: ``behaviour.py`` decides what a request gets (pure, chosen by the model
name), ``wire.py`` renders that decision as OpenAI JSON, ``anthropic_wire.py`` and
``gemini_wire.py`` read those providers' requests and render the same decision in their
dialects (all pure), ``server.py`` is the thin aiohttp adapter that sleeps, writes and
counts. ``tollway mock-provider`` starts it from a shell.
"""
