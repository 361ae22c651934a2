"""Offline image data for few-shot classification: rendered glyphs and the Omniglot folders."""
