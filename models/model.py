"""The module's name before issue 17: GPT2Model lives in models/transformer.py (the checkpoint's `transformer.`).

Kept so `from models.model import GPT2Model` still works; runtime/model.py is the runtime's loaded export.
"""

from .transformer import GPT2Model

__all__ = ["GPT2Model"]
