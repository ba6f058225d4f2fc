"""Task heads on top of GPT2Model: language modelling (tied to wte), double heads (LM + multiple choice),
sequence classification, token classification and extractive question answering.

References: transformers 4.57 `modeling_gpt2` (GPT2LMHeadModel, GPT2DoubleHeadsModel with
GPT2SequenceSummary, GPT2ForSequenceClassification, GPT2ForTokenClassification, GPT2ForQuestionAnswering)
and `loss/loss_utils.ForCausalLMLoss`. Shape legend: B batch, T tokens, C embedding, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .activations import Activation
from .config import GPT2Config
from .generation import GenerationMixin
from .outputs import (
    CausalLMOutput,
    DoubleHeadsOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .pretrained import GPT2PreTrainedModel
from .transformer import GPT2Model


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Next-token cross entropy: position t predicts labels[t + 1]; -100 labels are ignored."""
    logits = logits.float()
    labels = F.pad(labels.to(logits.device), (0, 1), value=-100)[..., 1:]  # (B, T) shifted left
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction=reduction
    )
    return loss / num_items_in_batch if num_items_in_batch is not None else loss


class GPT2LMHeadModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with a language-modelling head whose weight is wte's."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | None = None,
    ) -> CausalLMOutput:
        """Logits for every position (or the last `logits_to_keep`), and the shifted LM loss given labels."""
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        hidden = out.last_hidden_state.to(self.lm_head.weight.device)  # (B, T, C)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])  # (B, T', V)
        loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return CausalLMOutput(
            logits=logits,
            loss=loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )


class GPT2SequenceSummary(nn.Module):
    """One vector per sequence (last / first / mean / cls_index token), then optional projection and activation."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.summary_type = config.summary_type
        if self.summary_type == "attn":
            raise ValueError("summary_type 'attn' is not implemented (nor in transformers): use 'cls_index' or 'last'")
        self.summary: nn.Module = nn.Identity()
        if config.summary_use_proj:
            if config.summary_proj_to_labels and config.num_labels > 0:
                num_classes = config.num_labels
            else:
                num_classes = config.n_embd
            self.summary = nn.Linear(config.n_embd, num_classes)
        activation = config.summary_activation
        self.activation: nn.Module = Activation(activation) if activation else nn.Identity()
        self.first_dropout: nn.Module = nn.Identity()
        if config.summary_first_dropout > 0:
            self.first_dropout = nn.Dropout(config.summary_first_dropout)
        self.last_dropout: nn.Module = nn.Identity()
        if config.summary_last_dropout > 0:
            self.last_dropout = nn.Dropout(config.summary_last_dropout)

    def forward(self, hidden_states: torch.Tensor, cls_index: torch.LongTensor | None = None) -> torch.Tensor:
        """(..., T, C) -> (..., num_classes)."""
        if self.summary_type == "last":
            output = hidden_states[:, -1]
        elif self.summary_type == "first":
            output = hidden_states[:, 0]
        elif self.summary_type == "mean":
            output = hidden_states.mean(dim=1)
        else:  # cls_index
            if cls_index is None:
                cls_index = torch.full_like(hidden_states[..., :1, :], hidden_states.shape[-2] - 1, dtype=torch.long)
            else:
                if int(cls_index.max()) >= hidden_states.shape[-2] or int(cls_index.min()) < 0:
                    raise ValueError(
                        f"mc_token_ids holds {int(cls_index.max())}, outside the sequence of {hidden_states.shape[-2]} "
                        "tokens: point at a token position in [0, sequence)"
                    )
                cls_index = cls_index.unsqueeze(-1).unsqueeze(-1)
                cls_index = cls_index.expand((-1,) * (cls_index.dim() - 1) + (hidden_states.size(-1),))
            output = hidden_states.gather(-2, cls_index).squeeze(-2)  # (B, ..., C)
        return self.last_dropout(self.activation(self.summary(self.first_dropout(output))))


class GPT2DoubleHeadsModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with an LM head and a multiple-choice head reading one token per choice."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        config.num_labels = 1
        config.id2label = {0: "LABEL_0"}
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.multiple_choice_head = GPT2SequenceSummary(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mc_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mc_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
    ) -> DoubleHeadsOutput:
        """input_ids (B, num_choices, T) -> LM logits (B, num_choices, T, V) and choice logits (B, num_choices)."""
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        hidden = out.last_hidden_state.to(self.lm_head.weight.device)
        lm_logits = self.lm_head(hidden)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)  # (B, num_choices)
        mc_loss = None
        if mc_labels is not None:
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.size(-1)), mc_labels.view(-1))
        lm_loss = None
        if labels is not None:
            shift_logits = lm_logits[..., :-1, :].contiguous()
            shift_labels = labels.to(lm_logits.device)[..., 1:].contiguous()
            lm_loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return DoubleHeadsOutput(
            logits=lm_logits,
            mc_logits=mc_logits,
            loss=lm_loss,
            mc_loss=mc_loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def classification_loss(config: GPT2Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Regression (MSE), single-label (cross entropy) or multi-label (BCE), chosen as transformers does."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if num_labels == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(
        f"problem_type {config.problem_type!r} is unknown: use 'regression', 'single_label_classification' "
        "or 'multi_label_classification'"
    )


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 classifying each sequence from its last non-pad token."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput:
        """Pooled logits (B, num_labels) at the rightmost token that is not pad_token_id (the last without one)."""
        batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if self.config.pad_token_id is None and batch_size != 1:
            raise ValueError(
                f"a batch of {batch_size} sequences needs config.pad_token_id to find each one's last token: "
                "set pad_token_id (e.g. to eos_token_id) or classify one sequence at a time"
            )
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(out.last_hidden_state.to(self.score.weight.device))  # (B, T, num_labels)
        if self.config.pad_token_id is None or input_ids is None:
            last = -1
        else:
            # Works for left and right padding: the rightmost position that holds a real token.
            non_pad = (input_ids != self.config.pad_token_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * non_pad).argmax(-1)  # (B,)
        pooled = logits[torch.arange(batch_size, device=logits.device), last]  # (B, num_labels)
        loss = classification_loss(self.config, pooled, labels) if labels is not None else None
        return SequenceClassifierOutput(
            logits=pooled,
            loss=loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 labelling every token."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = config.extra.get("hidden_dropout")
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> TokenClassifierOutput:
        """Per-token logits (B, T, num_labels) and cross entropy given labels."""
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state.to(self.classifier.weight.device)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.to(logits.device).view(-1))
        return TokenClassifierOutput(
            logits=logits, loss=loss, hidden_states=out.hidden_states, attentions=out.attentions
        )


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 predicting answer span start and end positions."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringOutput:
        """Start and end logits (B, T); the mean of both cross entropies given positions."""
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.qa_outputs(out.last_hidden_state.to(self.qa_outputs.weight.device))  # (B, T, 2)
        start_logits, end_logits = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            # Positions outside the input are clamped to an ignored index, as transformers does.
            ignored = start_logits.size(1)
            start_positions = start_positions.to(start_logits.device).clamp(0, ignored)
            end_positions = end_positions.to(end_logits.device).clamp(0, ignored)
            start_loss = F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
            end_loss = F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        return QuestionAnsweringOutput(
            start_logits=start_logits,
            end_logits=end_logits,
            loss=loss,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
