"""Torch-free runtime for exported GPT-2 folders: ONNX Runtime decoding that reproduces transformers' generate().

    import runtime
    model = runtime.load("exports/gpt2")            # provider="cpu" | "cuda" | "tensorrt"
    model.generate_text("Hello, my name is", max_new_tokens=20)

Nothing under `runtime` may import torch or `models`: it installs with the base dependencies only.
"""

from runtime.manifest import Manifest, ManifestError
from runtime.model import Classification, Model, load
from runtime.options import GenerationOptions
from runtime.tokenizer import StreamDecoder, Tokenizer, TokenizerNotFoundError

__all__ = [
    "Classification",
    "GenerationOptions",
    "Manifest",
    "ManifestError",
    "Model",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerNotFoundError",
    "load",
]
