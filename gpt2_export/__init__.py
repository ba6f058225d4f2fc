"""gpt2-export: trace GPT-2 heads to ONNX, validate them against PyTorch, and build deployable artifacts."""

__version__ = "0.1.0"
