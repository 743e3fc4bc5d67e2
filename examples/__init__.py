"""Runnable examples: ``python examples/chat.py`` or ``wsflask run examples.chat:app``."""
