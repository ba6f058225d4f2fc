"""Torch-free runtime for exported GPT-2 graphs: tokenizer now; ONNX Runtime generation to come.

Nothing under `runtime` may import torch or `models`: it installs with the base dependencies only.
"""

from runtime.tokenizer import StreamDecoder, Tokenizer, TokenizerNotFoundError

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerNotFoundError"]
