"""Reference decoding with the KV cache (placeholder while it is written)."""


class GenerationMixin:
    """generate() for LM heads."""
