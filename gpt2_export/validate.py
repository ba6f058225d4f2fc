"""Validation of an exported graph against the PyTorch reference, in ONNX Runtime on CPU.

Four cases cover what a decoding loop does: a multi-token prompt with an empty past, one new token on
a past, a left-padded batch, and a decode step fed with ONNX Runtime's own presents after that
left-padded prefill. Each output is compared at real (non-pad) positions; one line per output is
reported, and a single ValidationError lists every output that missed its tolerance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import models
from runtime.manifest import PRESENT_PREFIX, Manifest, past_name, present_name

from .contract import MAIN_OUTPUT, past_names, present_names
from .progress import Reporter, silent

# |onnx - torch| <= atol + rtol * |torch|, per element, per dtype of the exported graph.
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 2e-2)}
# Quantized weights: |onnx - torch| <= fraction * max |torch| of that output (error scales with the output).
QUANTIZED_TOLERANCES: dict[str, float] = {"int8": 0.10, "int4": 0.40}


class ValidationError(RuntimeError):
    """At least one output of the exported graph missed its tolerance."""

    def __init__(self, report: ValidationReport):
        failed = [c for c in report.checks if not c.passed]
        lines = [f"  {c.case} / {c.output}: max |diff| {c.max_abs_diff:.3g} > tolerance" for c in failed]
        lines += [f"  {problem}" for problem in report.problems]
        super().__init__(f"{len(failed) + len(report.problems)} check(s) failed:\n" + "\n".join(lines))
        self.report = report


@dataclass
class OutputCheck:
    """One output of one case."""

    case: str
    output: str
    max_abs_diff: float
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return f"{status} {self.case:<34} {self.output:<24} max|diff| {self.max_abs_diff:.2e}"


@dataclass
class ValidationReport:
    """Everything validation found, stored in export.json."""

    dtype: str
    atol: float
    rtol: float
    weights: str = "float"
    checker: str = "not run"
    checks: list[OutputCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    greedy: dict | None = None
    text_agreement: dict | None = None  # `validate --text`: TextAgreement.to_dict()

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Case:
    """Inputs of one validation call, as numpy (graph) arrays."""

    name: str
    feeds: dict[str, np.ndarray]
    query_mask: np.ndarray  # (rows, T) 1 at real tokens
    key_mask: np.ndarray  # (rows, S) 1 at real keys


def _positions(mask: np.ndarray) -> np.ndarray:
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def _session(onnx_path: Path) -> ort.InferenceSession:
    """A CPU session on the graph; a file ONNX Runtime cannot load is one clear error, not its traceback."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, InvalidGraph, NoSuchFile, ...) share no base
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"ONNX Runtime cannot load {onnx_path} ({reason}): re-export the checkpoint") from e


class Validator:
    """Runs the reference model and the ONNX graph on the same inputs and compares them."""

    def __init__(self, model: models.GPT2PreTrainedModel, manifest: Manifest, onnx_path: Path, report: Reporter):
        head, dtype = manifest.head, manifest.dtype
        if dtype not in TOLERANCES:
            raise ValueError(f"export.json names dtype {dtype!r}, not one of {', '.join(TOLERANCES)}: re-export it")
        self.manifest = manifest
        self.model = model.float().eval()
        self.head = head
        self.config = model.config
        self.n_layer = model.config.n_layer
        self.heads_per_layer = [block.attn.num_heads for block in model.base_model.h]
        self.float_type = np.float16 if dtype == "fp16" else np.float32
        self.session = _session(onnx_path)
        self.atol, self.rtol = TOLERANCES[dtype]
        self.quantized = QUANTIZED_TOLERANCES.get(manifest.weights)
        self.result = ValidationReport(dtype=dtype, atol=self.atol, rtol=self.rtol)
        self.result.weights = manifest.weights
        self.shared = manifest.kv_cache == "shared"
        self._decoder = None  # the in-place cache graph keeps its cache between calls
        self._agreement = [0, 0]
        self.report = report
        self.rng = np.random.default_rng(0)

    # ---- inputs ----------------------------------------------------------------------------------

    def _empty_past(self, rows: int) -> dict[str, np.ndarray]:
        hd = self.config.head_dim
        return {
            name: np.zeros((rows, self.heads_per_layer[int(name.split(".")[1])], 0, hd), self.float_type)
            for name in past_names(self.n_layer)
        }

    def _tokens(self, shape: tuple[int, ...]) -> np.ndarray:
        low = 1 if self.config.pad_token_id == 0 else 0
        ids = self.rng.integers(low, self.config.vocab_size, size=shape, dtype=np.int64)
        if self.config.pad_token_id is not None:
            ids[ids == self.config.pad_token_id] = (self.config.pad_token_id + 1) % self.config.vocab_size
        return ids

    def _case(self, name: str, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> Case:
        """Wrap (rows, T) ids and (rows, S) mask into the head's feeds (double heads: 2 choices per row)."""
        t = ids.shape[-1]
        positions = _positions(mask)[:, -t:]
        feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "position_ids": positions}
        if self.head == "double-heads":
            rows = ids.shape[0]
            feeds = {k: v.reshape(rows // 2, 2, v.shape[-1]) for k, v in feeds.items()}
            feeds["mc_token_ids"] = np.full((rows // 2, 2), t - 1, dtype=np.int64)
        return Case(name, {**feeds, **past}, mask[:, -t:], mask)

    # ---- running ---------------------------------------------------------------------------------

    def run_onnx(self, case: Case) -> dict[str, np.ndarray]:
        if self.shared:
            return self._run_shared(case)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, case.feeds), strict=True))

    def _run_shared(self, case: Case) -> dict[str, np.ndarray]:
        """In-place cache graphs run through the runtime's decoder; a case with an empty past starts a new cache."""
        from runtime.onnx_decoder import SharedCacheDecoder

        past = case.feeds.get("past_key_values.0.key")
        if past is not None and past.shape[2] == 0 or self._decoder is None:
            rows = case.feeds["input_ids"].shape[0]
            self._decoder = SharedCacheDecoder(self.session, self.manifest, "cpu", rows, 32)
        f = case.feeds
        return {"logits": self._decoder.forward(f["input_ids"], f["attention_mask"], f["position_ids"])}

    def run_torch(self, case: Case) -> dict[str, np.ndarray]:
        if self.head == "seq-cls" and self.config.pad_token_id is None:
            # Without a pad id the reference refuses batches; the graph pools the last position, row by row alike.
            rows = [
                self._run_torch({k: v[i : i + 1] for k, v in case.feeds.items()}) for i in range(len(case.query_mask))
            ]
            return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
        return self._run_torch(case.feeds)

    def _run_torch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        f = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        past = tuple(
            (f[past_name(i, "key")].float(), f[past_name(i, "value")].float())
            for i in range(self.n_layer)
        )
        kwargs = dict(attention_mask=f["attention_mask"], position_ids=f["position_ids"], past_key_values=past)
        if self.head == "double-heads":
            kwargs["mc_token_ids"] = f["mc_token_ids"]
        with torch.no_grad():
            out = self.model(f["input_ids"], use_cache=True, **kwargs)
        result = {MAIN_OUTPUT[self.head]: getattr(out, "last_hidden_state" if self.head == "base" else "logits")}
        if self.head == "double-heads":
            result["mc_logits"] = out.mc_logits
        for i, (k, v) in enumerate(out.past_key_values):
            result[present_name(i, "key")], result[present_name(i, "value")] = k, v
        return {name: t.numpy() for name, t in result.items()}

    def compare(self, case: Case, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
        for name, expected in want.items():
            if name not in got:
                if not (self.shared and name.startswith(PRESENT_PREFIX)):  # in-place caches keep their own layout
                    self.result.problems.append(
                        f"{case.name}: the graph has no output {name!r}: it does not match export.json's "
                        f"{self.head} head; re-export the checkpoint"
                    )
                continue
            actual = got[name].astype(np.float32)
            if actual.shape != expected.shape:
                self.result.problems.append(
                    f"{case.name} / {name}: the graph gives shape {actual.shape}, the reference {expected.shape}: "
                    "the graph does not match export.json's model; re-export the checkpoint"
                )
                self.report(f"FAIL {case.name:<34} {name:<24} shape {actual.shape} != {expected.shape}")
                continue
            mask = self._compare_mask(name, case, expected.shape)
            diff = np.abs(actual - expected)
            if self.quantized is not None:
                bound = np.full(expected.shape, self.quantized * float(np.abs(expected[mask]).max()), np.float32)
            else:
                bound = self.atol + self.rtol * np.abs(expected)
            if name == "logits" and self.head == "lm":
                real = mask[..., 0]
                self._agreement[0] += int((actual.argmax(-1) == expected.argmax(-1))[real].sum())
                self._agreement[1] += int(real.sum())
            diff_m, ok = diff[mask], (diff <= bound)[mask]
            finite = bool(np.isfinite(actual[mask]).all())
            max_diff = float(diff_m.max()) if diff_m.size else 0.0
            check = OutputCheck(
                case.name, name, max_diff if finite else math.inf, self.atol, self.rtol, bool(ok.all()) and finite
            )
            self.result.checks.append(check)
            self.report(check.line())

    def _compare_mask(self, name: str, case: Case, shape: tuple[int, ...]) -> np.ndarray:
        """Where an output is meaningful: real query tokens for hidden/logits, real keys for presents."""
        if name.startswith(PRESENT_PREFIX):
            return np.broadcast_to(case.key_mask.astype(bool)[:, None, :, None], shape)
        if name == "mc_logits" and self.config.summary_type != "cls_index":
            # first / mean / last summaries read pad positions too: only batch rows without padding are defined.
            unpadded = case.query_mask.astype(bool).reshape(shape[0], -1).all(-1)  # (B,)
            return np.broadcast_to(unpadded.reshape(-1, *[1] * (len(shape) - 1)), shape)
        if name == "mc_logits" or self.head == "seq-cls":
            return np.ones(shape, dtype=bool)
        query = case.query_mask.astype(bool)
        if self.head == "double-heads":
            query = query.reshape(shape[0], shape[1], shape[2])
        return np.broadcast_to(query[..., None], shape)

    # ---- the suite -------------------------------------------------------------------------------

    def _as_past(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """present.* outputs renamed as the next call's past_key_values.* inputs (none: the graph keeps its own)."""
        if "present.0.key" not in outputs:
            return {}
        pairs = zip(past_names(self.n_layer), present_names(self.n_layer), strict=True)
        return {past: outputs[present].astype(self.float_type) for past, present in pairs}

    def run(self) -> ValidationReport:
        """Run the four cases and return the report (never raises for numeric misses)."""
        rows = 4 if self.head == "double-heads" else 2
        # Every case ends within the position table (a prompt and one more token).
        prompt = min(7, self.config.n_positions - 1)
        prefill = self._case(
            "prefill (past 0)", self._tokens((rows, prompt)), np.ones((rows, prompt), np.int64),
            self._empty_past(rows)
        )
        want = self.run_torch(prefill)
        self.compare(prefill, self.run_onnx(prefill), want)

        decode = self._case(
            f"decode (past {prompt}, 1 new token)", self._tokens((rows, 1)), np.ones((rows, prompt + 1), np.int64),
            self._as_past(want)
        )
        self.compare(decode, self.run_onnx(decode), self.run_torch(decode))

        rows, width = 4, min(6, prompt)
        mask = np.ones((rows, width), dtype=np.int64)
        for r, pads in enumerate([0, 2, 4, 5]):
            mask[r, : min(pads, width - 1)] = 0
        ids = np.where(mask == 0, self.config.pad_token_id or 0, self._tokens((rows, width)))
        padded = self._case("left-padded prefill (batch 4)", ids, mask, self._empty_past(rows))
        got, want = self.run_onnx(padded), self.run_torch(padded)
        self.compare(padded, got, want)

        # The graph decodes on its own presents, so errors that compound through the cache show up.
        mask = np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        step = self._case("decode after left-padded prefill", self._tokens((rows, 1)), mask, self._as_past(got))
        reference = Case(step.name, {**step.feeds, **self._as_past(want)}, step.query_mask, step.key_mask)
        self.compare(step, self.run_onnx(step), self.run_torch(reference))
        if self.head == "lm":
            length = min(6, self.config.n_positions - 1)
            self.result.greedy = self.greedy_agreement(length, min(8, self.config.n_positions - length))
            agreed, total = self._agreement
            self.result.greedy["argmax_agreement"] = agreed / total if total else None
            self.report(self.result.greedy["summary"])
            if total:
                self.report(f"argmax agreement with the fp32 reference over {total} positions: {agreed / total:.1%}")
            if self.quantized is not None:
                self.result.greedy["passed"] = True  # quantization may flip close calls: reported, not enforced
            elif not self.result.greedy["passed"]:
                self.result.problems.append(self.result.greedy["summary"])
        return self.result

    def greedy_agreement(self, prompt_length: int = 6, new_tokens: int = 8) -> dict:
        """Greedy tokens of the graph's own decode loop against the reference's, on one short prompt.

        A divergence counts as a failure unless the reference itself ranks the two tokens within the
        tolerance of each other (a near-tie that fp16 rounding may legitimately flip).
        """
        ids = self._tokens((1, prompt_length))
        mask = np.ones((1, prompt_length), dtype=np.int64)
        case = self._case("greedy", ids, mask, self._empty_past(1))
        onnx_tokens, reference_tokens = [], []
        step_ids, past = torch.from_numpy(ids), None
        for _ in range(new_tokens):
            out = self.run_onnx(case)
            onnx_tokens.append(int(out["logits"][0, -1].argmax()))
            with torch.no_grad():
                result = self.model(step_ids, past_key_values=past, use_cache=True)
            logits, past = result.logits[0, -1], result.past_key_values
            reference_tokens.append(int(logits.argmax()))
            if onnx_tokens[-1] != reference_tokens[-1]:
                margin = float(logits[reference_tokens[-1]] - logits[onnx_tokens[-1]])
                tie = margin <= self.atol + self.rtol * float(logits.abs().max())
                step = len(onnx_tokens) - 1
                kind = "a near-tie" if tie else "a clear winner"
                summary = (
                    f"greedy tokens diverge at step {step} on {kind} (reference margin {margin:.2e}): "
                    f"onnx {onnx_tokens}, reference {reference_tokens}"
                )
                return {
                    "passed": tie,
                    "steps_equal": step,
                    "onnx": onnx_tokens,
                    "reference": reference_tokens,
                    "summary": summary,
                }
            step_ids = torch.tensor([[onnx_tokens[-1]]])
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            case = self._case("greedy", np.array([[onnx_tokens[-1]]]), mask, self._as_past(out))
        summary = f"greedy tokens equal for {new_tokens} steps: {onnx_tokens}"
        return {
            "passed": True,
            "steps_equal": new_tokens,
            "onnx": onnx_tokens,
            "reference": reference_tokens,
            "summary": summary,
        }


@dataclass
class TextAgreement:
    """Teacher-forced next-token agreement of the graph with the fp32 reference on the user's text."""

    positions: int
    agreed: int
    window: int

    @property
    def rate(self) -> float:
        """Share of positions where both argmaxes agree (nan for no positions)."""
        return self.agreed / self.positions if self.positions else math.nan

    def to_dict(self) -> dict:
        """The counts and the rate, as export.json's validation stores them."""
        return {**asdict(self), "rate": self.rate}

    def line(self) -> str:
        """One line for the validation report."""
        return (f"next-token agreement with the fp32 reference on the text: {self.rate:.1%} "
                f"({self.agreed} of {self.positions} positions, windows of {self.window} tokens)")


def text_windows(ids: np.ndarray, window: int, max_positions: int | None = None) -> list[np.ndarray]:
    """Non-overlapping windows of `window` tokens (the last one shorter), each scored from an empty past."""
    ids = np.asarray(ids, dtype=np.int64)
    if max_positions is not None:
        ids = ids[:max_positions]
    return [ids[start : start + window] for start in range(0, ids.size, window) if ids[start : start + window].size]


def measure_text_agreement(model: models.GPT2PreTrainedModel, manifest: Manifest, onnx_path: Path, ids: np.ndarray,
                           window: int = 128, max_positions: int | None = None) -> TextAgreement:
    """Share of positions of `ids` where the graph's argmax equals the fp32 reference's (lm head only).

    Teacher-forced: both read the same text, window by window, so one flip does not change what follows.
    """
    if manifest.head != "lm":
        raise ValueError(f"next-token agreement needs an lm head export, this one is {manifest.head}: drop --text")
    ids = np.asarray(ids, dtype=np.int64)
    vocab = model.config.vocab_size
    if ids.size < 2:
        raise ValueError(f"the text encodes to {ids.size} token(s): give a text of a few hundred tokens or more")
    if int(ids.max()) >= vocab:
        raise ValueError(
            f"the text encodes to token id {int(ids.max())}, out of range for vocab_size {vocab}: "
            "the export's tokenizer does not belong to this checkpoint; re-export it"
        )
    window = min(window, model.config.n_positions)
    validator = Validator(model, manifest, onnx_path, silent)
    agreed = positions = 0
    for chunk in text_windows(ids, window, max_positions):
        t = chunk.size
        case = validator._case("text", chunk[None], np.ones((1, t), np.int64), validator._empty_past(1))
        got = validator.run_onnx(case)["logits"].astype(np.float32)  # (1, T, V)
        want = validator.run_torch(case)["logits"]  # (1, T, V)
        agreed += int((got.argmax(-1) == want.argmax(-1)).sum())
        positions += t
    return TextAgreement(positions, agreed, window)


def check_graph(onnx_path: Path) -> str:
    """onnx.checker's full check (with shape inference), by path so external data works."""
    onnx.checker.check_model(str(onnx_path), full_check=True)
    return "onnx.checker full check: ok"


def validate(
    model: models.GPT2PreTrainedModel, manifest: Manifest, onnx_path: Path, report: Reporter = silent
) -> ValidationReport:
    """Check the graph and compare it with the reference; never raises for numeric misses (see `raise_if_failed`)."""
    validator = Validator(model, manifest, onnx_path, report)
    try:
        validator.result.checker = check_graph(onnx_path)
    except onnx.checker.ValidationError as e:
        validator.result.problems.append(f"onnx.checker: {e}")
    report(validator.result.checker)
    return validator.run()


def raise_if_failed(report: ValidationReport) -> None:
    """Raise one ValidationError listing every failed check."""
    if not report.passed:
        raise ValidationError(report)
