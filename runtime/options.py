"""Generation options: one validated dataclass with transformers' names and defaults, torch-free.

The one home of the decoding options' contract (names, defaults, validation, length resolution), shared by
the runtime (`runtime.decoding`) and the reference model's `generate()` (`models.generation.GenerationConfig`,
which subclasses this to read eos / pad from the model config by default and to turn eos off with None).
Lengths count as transformers 4.57 counts them: max_length includes the prompt, max_new_tokens wins when both
are given, and with neither a call adds 20 tokens (fewer where the position table ends first).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS", "FROM_MODEL", "OFF_VALUES", "FromModel", "GenerationOptions", "check_int", "is_number",
]

DEFAULT_MAX_NEW_TOKENS = 20  # transformers' max_length 20, which it counts from the prompt's end when left unset
# transformers reads None as "off" for these (generate(temperature=None) samples unscaled).
OFF_VALUES = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0,
              "no_repeat_ngram_size": 0, "min_new_tokens": 0}
_HINTS = {"min_length": "use min_new_tokens"}


class FromModel(enum.Enum):
    """The type of FROM_MODEL."""

    FROM_MODEL = "from the model config"


FROM_MODEL = FromModel.FROM_MODEL  # an eos / pad default read from the model's config when generation starts


def is_number(value: object) -> bool:
    """An int or float (numpy scalars included), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, minimum: int, fix: str) -> None:
    """value must be an int >= minimum, or raise ValueError naming both and the fix."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}: {fix}")


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options with transformers' names and defaults, validated on construction.

    eos_token_id / pad_token_id, when not None, override the model's ids passed to `generate`.
    """

    max_new_tokens: int | None = None  # None: max_length - prompt length if set, else 20 (fewer near n_positions)
    max_length: int | None = None  # prompt + new tokens; max_new_tokens wins when both are set (transformers)
    min_new_tokens: int = 0  # eos is blocked until this many tokens are new
    do_sample: bool = False
    temperature: float = 1.0  # sampling only; must be > 0 then
    top_k: int | None = 50  # sampling only; 0 or None disables
    top_p: float = 1.0  # sampling only; 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables
    no_repeat_ngram_size: int = 0  # 0 disables
    num_beams: int = 1  # > 1: beam search (with do_sample: beam sampling, as transformers)
    length_penalty: float = 1.0  # beam search: score = sum_logprobs / new_tokens ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never"
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None  # None: the model's
    pad_token_id: int | None = None  # None: the model's, else the first eos id
    seed: int | None = None  # sampling: None draws fresh OS entropy

    # What None means for eos_token_id and seed, for the error messages (GenerationConfig reads them otherwise).
    _EOS_NONE = "use None for the model's eos id"
    _SEED_NONE = "or None for fresh entropy"

    def __post_init__(self) -> None:
        self._check_lengths()
        self._check_sampling()
        self._check_beams()
        self._check_special_tokens()
        if self.seed is not None:
            check_int("seed", self.seed, 0, f"use a non-negative integer, {self._SEED_NONE}")

    def _check_lengths(self) -> None:
        if self.max_new_tokens is not None:
            check_int("max_new_tokens", self.max_new_tokens, 1, "ask for at least one new token")
        if self.max_length is not None:
            check_int("max_length", self.max_length, 1, "it counts the prompt too; or set max_new_tokens")
        check_int("min_new_tokens", self.min_new_tokens, 0, "use 0 to allow eos right away")
        # Known here unless max_length sets it from the prompt's length (resolved() checks it again then).
        max_new = self.max_new_tokens if self.max_new_tokens is not None or self.max_length is not None \
            else DEFAULT_MAX_NEW_TOKENS
        if max_new is not None and self.min_new_tokens > max_new:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={max_new}: "
                f"raise max_new_tokens to at least {self.min_new_tokens} or lower min_new_tokens"
            )

    def _check_sampling(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(
                f"do_sample={self.do_sample!r} must be True or False: pass True to sample, False for greedy / beams"
            )
        if not is_number(self.temperature):
            raise ValueError(f"temperature={self.temperature!r} is not a number: use e.g. 0.7 (1.0 leaves the "
                             "distribution as is)")
        if self.do_sample and not 0 < self.temperature < math.inf:
            raise ValueError(
                f"temperature={self.temperature!r} must be > 0 when do_sample=True: use e.g. 0.7 "
                "(1.0 leaves the distribution as is), or do_sample=False for greedy decoding"
            )
        if self.top_k is not None:
            check_int("top_k", self.top_k, 0, "use e.g. 50, or 0 / None to turn top-k filtering off")
        if not (is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(
                f"top_p={self.top_p!r} is outside (0, 1]: use a probability such as 0.9 "
                "(1.0 turns nucleus filtering off)"
            )
        if not (is_number(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf):
            raise ValueError(
                f"repetition_penalty={self.repetition_penalty!r} must be > 0: 1.0 turns it off, "
                "values above 1 (e.g. 1.2) discourage repeats"
            )
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, "use 0 to turn it off, or e.g. 3")

    def _check_beams(self) -> None:
        check_int("num_beams", self.num_beams, 1, "use 1 for greedy / sampling, or e.g. 4 for beam search")
        if not (is_number(self.length_penalty) and math.isfinite(self.length_penalty)):
            raise ValueError(
                f"length_penalty={self.length_penalty!r} must be a finite number: use e.g. 1.0 (> 0 favours longer "
                "beams, < 0 shorter ones)"
            )
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(
                f"early_stopping={self.early_stopping!r} must be True, False or 'never': True stops once num_beams "
                "sequences are finished, False uses transformers' heuristic, 'never' runs the full search"
            )
        check_int("num_return_sequences", self.num_return_sequences, 1, "use 1 or more")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} exceeds num_beams={self.num_beams}: "
                "beam search keeps num_beams sequences per prompt; "
                f"set num_beams >= {self.num_return_sequences} or lower num_return_sequences"
            )
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} with greedy decoding (num_beams=1, "
                "do_sample=False) would return identical copies: set do_sample=True or num_beams >= "
                f"{self.num_return_sequences}"
            )

    def _check_special_tokens(self) -> None:
        eos = self.eos_token_id
        if isinstance(eos, np.ndarray):  # as transformers takes a tensor of ids
            eos = eos.tolist()  # 0-d: one int
        if isinstance(eos, (list, tuple)):
            if not eos:
                raise ValueError(f"eos_token_id={eos!r} names no token: {self._EOS_NONE}")
            for token in eos:
                check_int("eos_token_id", token, 0, "token ids are non-negative")
            eos = tuple(int(t) for t in eos)
        elif eos is not None and eos is not FROM_MODEL:
            check_int("eos_token_id", eos, 0, "token ids are non-negative")
        object.__setattr__(self, "eos_token_id", eos)
        if self.pad_token_id is not None and self.pad_token_id is not FROM_MODEL:
            check_int("pad_token_id", self.pad_token_id, 0, "token ids are non-negative")

    def with_overrides(self, **overrides: object) -> GenerationOptions:
        """A copy with some fields replaced (and validated); unknown names raise TypeError listing valid ones."""
        names = [field.name for field in dataclasses.fields(self)]
        unknown = [key for key in overrides if key not in names]
        if unknown:
            hints = "".join(f" ({key}: {_HINTS[key]})" for key in unknown if key in _HINTS)
            raise TypeError(
                f"unknown generation option(s) {', '.join(unknown)}{hints}; valid options: {', '.join(names)}"
            )
        overrides = {key: OFF_VALUES[key] if value is None and key in OFF_VALUES else value
                     for key, value in overrides.items()}
        return dataclasses.replace(self, **overrides)

    def resolved(self, prompt_len: int, n_positions: int | None = None) -> GenerationOptions:
        """A copy with max_new_tokens set from max_new_tokens, max_length or the default, as transformers does."""
        if self.max_new_tokens is not None:
            new = self.max_new_tokens
        elif self.max_length is not None:
            if n_positions is not None and self.max_length > n_positions:
                raise ValueError(f"max_length={self.max_length} exceeds n_positions {n_positions}: lower max_length "
                                 f"to {n_positions} or fewer (it counts the prompt)")
            new = self.max_length - prompt_len
            if new < 1:
                raise ValueError(
                    f"input_ids has {prompt_len} tokens but max_length={self.max_length}, which counts the prompt: "
                    f"raise max_length above {prompt_len}, or set max_new_tokens (new tokens only)"
                )
        else:  # transformers: max_length 20 counted from the prompt's end, capped at the position table
            room = n_positions - prompt_len if n_positions is not None else DEFAULT_MAX_NEW_TOKENS
            new = min(DEFAULT_MAX_NEW_TOKENS, room)
            if new < 1:
                raise ValueError(f"input_ids has {prompt_len} tokens, which fills n_positions {n_positions}: shorten "
                                 f"the prompt below {n_positions} tokens")
        if self.min_new_tokens > new:  # a length set by max_length or the position table, not by max_new_tokens
            fits = n_positions is None or prompt_len + self.min_new_tokens <= n_positions
            if self.max_new_tokens is None and self.max_length is not None and fits:
                why = (f"max_length={self.max_length} leaves after a {prompt_len}-token prompt: raise max_length to "
                       f"{prompt_len + self.min_new_tokens} or lower min_new_tokens")
            else:
                why = (f"n_positions {n_positions} leaves after a {prompt_len}-token prompt: shorten the prompt or "
                       "lower min_new_tokens")
            raise ValueError(f"min_new_tokens={self.min_new_tokens} exceeds the {new} new tokens {why}")
        return dataclasses.replace(self, max_new_tokens=new, max_length=None)
