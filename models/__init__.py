"""Reference PyTorch GPT-2, number-for-number with Hugging Face transformers 4.57 `modeling_gpt2`.

Same config.json fields, same state-dict names, same outputs (as dataclasses), same cache layout.
"""

from .attention import FlashAttentionUnavailableError
from .config import PRESETS, GPT2Config
from .heads import (
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2SequenceSummary,
)
from .pretrained import GPT2PreTrainedModel
from .transformer import GPT2Model

__all__ = [
    "PRESETS",
    "FlashAttentionUnavailableError",
    "GPT2Config",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "GPT2SequenceSummary",
]
