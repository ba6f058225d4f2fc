"""What every GPT-2 model shares: weight initialisation, tying, head pruning, gradient checkpointing,
model parallelism, and loading / saving of Hugging Face folders.

References: transformers 4.57 `GPT2PreTrainedModel._init_weights` (the GPT-2 paper's scaled residual
init), `PreTrainedModel.post_init` / `prune_heads` / `get_head_mask`, and the deprecated
`parallelize(device_map)` API of `modeling_gpt2`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import GPT2Config
from .conv1d import Conv1D
from .loading import load_pretrained
from .parallel import apply_device_map, check_device_map, even_device_map
from .saving import save_pretrained


class GPT2PreTrainedModel(nn.Module):
    """Base class of GPT2Model and every head."""

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config):
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a models.GPT2Config, got {type(config).__name__}")
        self.config = config
        self.model_parallel = False
        self.device_map: dict[Any, list[int]] | None = None

    # ---- initialisation --------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, initializer_range) weights, zero biases, unit LayerNorms; residual c_proj scaled by 1/sqrt(2 L)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        # Two residual additions per block accumulate, so their projections start smaller (GPT-2 paper, sec. 2.3).
        for name, p in module.named_parameters():
            if name == "c_proj.weight":
                p.data.normal_(mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    def _initialize_module(self, module: nn.Module) -> None:
        # Children first, each module once: a GPT2Model built inside a head is already initialised.
        for child in module.children():
            self._initialize_module(child)
        if not getattr(module, "_gpt2_initialized", False):
            self._init_weights(module)
            module._gpt2_initialized = True

    def post_init(self) -> None:
        """Prune the heads the config lists, initialise weights, tie the LM head (in transformers' order)."""
        if self.config.pruned_heads:
            self.prune_heads(self.config.pruned_heads)
        self._initialize_module(self)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the LM head's weight with wte when the config ties them."""
        lm_head = getattr(self, "lm_head", None)
        if lm_head is not None and self.config.tie_word_embeddings:
            lm_head.weight = self.base_model.wte.weight

    # ---- structure -------------------------------------------------------------------------------

    @property
    def base_model(self):
        """The GPT2Model inside (self for GPT2Model)."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (the embeddings)."""
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Embedding:
        """wte."""
        return self.base_model.wte

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        """Replace wte (and re-tie the LM head)."""
        self.base_model.wte = embeddings
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head, for heads that have one."""
        return getattr(self, "lm_head", None)

    def num_parameters(self) -> int:
        """Number of parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Grow or shrink the vocabulary; new rows start as normal(0, initializer_range)."""
        old = self.get_input_embeddings()
        new = nn.Embedding(new_num_tokens, old.embedding_dim).to(device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(new)
        keep = min(new_num_tokens, old.num_embeddings)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
        self.config.vocab_size = new_num_tokens
        lm_head = getattr(self, "lm_head", None)
        if lm_head is not None and not self.config.tie_word_embeddings:
            head = nn.Linear(old.embedding_dim, new_num_tokens, bias=False).to(old.weight.device, old.weight.dtype)
            self._init_weights(head)
            with torch.no_grad():
                head.weight[:keep] = lm_head.weight[:keep]
            self.lm_head = head
        elif lm_head is not None:
            lm_head.out_features = new_num_tokens
        self.set_input_embeddings(new)
        return new

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove attention heads for good, e.g. {0: [1, 2]}; recorded in config.pruned_heads."""
        for layer, heads in heads_to_prune.items():
            if not 0 <= int(layer) < self.config.n_layer:
                raise ValueError(
                    f"cannot prune heads of layer {layer}: the model has layers 0..{self.config.n_layer - 1}"
                )
            bad = [h for h in heads if not 0 <= int(h) < self.config.n_head]
            if bad:
                raise ValueError(f"cannot prune heads {bad} of layer {layer}: heads are 0..{self.config.n_head - 1}")
            union = set(self.config.pruned_heads.get(int(layer), [])) | {int(h) for h in heads}
            if len(union) >= self.config.n_head:
                raise ValueError(
                    f"pruning heads {sorted(union)} would leave layer {layer} with no head: keep at least one"
                )
            self.config.pruned_heads[int(layer)] = sorted(union)
        self.base_model._prune_heads({int(k): [int(h) for h in v] for k, v in heads_to_prune.items()})

    # ---- training helpers ------------------------------------------------------------------------

    def gradient_checkpointing_enable(self) -> None:
        """Recompute block activations in the backward pass (turns use_cache off while training)."""
        self.base_model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep activations again."""
        self.base_model.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether gradient checkpointing is on."""
        return self.base_model.gradient_checkpointing

    # ---- model parallelism -------------------------------------------------------------------------

    def parallelize(self, device_map: dict[Any, list[int]] | None = None) -> None:
        """Spread the blocks over devices, e.g. {0: [0, 1, 2], 1: [3, 4, 5]}; embeddings and heads on the first."""
        n_layer = self.config.n_layer
        device_map = even_device_map(n_layer) if device_map is None else device_map
        devices = check_device_map(device_map, n_layer)
        apply_device_map(self, device_map, devices)
        self.device_map = device_map
        self.model_parallel = True
        self.base_model.model_parallel = True

    def deparallelize(self) -> None:
        """Bring every module back to the CPU."""
        self.to("cpu")
        self.device_map = None
        self.model_parallel = False
        self.base_model.model_parallel = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- persistence -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: GPT2Config | None = None,
        attn_implementation: str | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **config_overrides: Any,
    ):
        """Load a Hugging Face GPT-2 folder, a hub id from the local cache, or an OpenAI TF checkpoint.

        `dtype` (or transformers' older name `torch_dtype`): None loads fp32, "auto" the checkpoint's dtype.
        """
        if cls is GPT2PreTrainedModel:
            raise TypeError(
                "from_pretrained needs a concrete class: call it on GPT2Model, GPT2LMHeadModel or another head "
                "(config.json's `architectures` names the one the checkpoint was saved from)"
            )
        return load_pretrained(
            cls,
            name_or_path,
            config=config,
            attn_implementation=attn_implementation,
            dtype=dtype if dtype is not None else torch_dtype,
            **config_overrides,
        )

    def save_pretrained(
        self, folder: str | os.PathLike, *, max_shard_size: int | str | None = None, safe_serialization: bool = True
    ) -> Path:
        """Write config.json and model.safetensors (shards above max_shard_size, default "5GB"), as transformers."""
        return save_pretrained(self, folder, max_shard_size=max_shard_size, safe_serialization=safe_serialization)
