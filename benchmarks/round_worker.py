"""`python -m benchmarks.round_worker SPEC`: one participant of the interleaved rounds, loaded once, measured on demand.

The orchestrator (benchmarks.rounds) keeps one such process per participant and asks each in turn for one
round, so every participant's rounds are spread over the same minutes of a noisy machine. Requests and
answers are JSON lines on stdin / on the process's original stdout (libraries' prints go to stderr, the log).
Kinds: "backend" (one of ours or transformers', benchmarks.backends), "ctranslate2", and "floor" (memory
read bandwidth and the GEMMs of one batch-B decode step, the compute floor). Shape legend: B batch, C n_embd.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("USE_TF", "0")  # before anything imports transformers

import numpy as np  # noqa: E402

from .measure import now_ns  # noqa: E402

GEMM_PASSES = 5  # timed batch-B GEMM steps per floor round (after one warm-up)


class GemmFloor:
    """The matrix products of one decode step at batch B on random fp32 weights of the model's shapes.

    Timed two ways, the faster one being the floor: numpy (its BLAS) and one ONNX Runtime graph of the same
    MatMuls (MLAS, the GEMMs our backends run), each with the benchmark's thread count. Either one alone can
    be a poor floor on a busy host: OpenBLAS' 2-thread skinny GEMMs were measured 10-25x slower than its
    1-thread ones here while other processes held the cores.
    """

    def __init__(self, config: dict[str, Any], batch: int, seed: int, threads: int = 1):
        from .analysis import step_products

        rng = np.random.default_rng(seed)
        shapes = step_products(config)
        # One array per layer's weight, as the model has: a step reads every one of them once.
        self.weights = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
        widths = sorted({k for k, _ in shapes})  # C and the MLP's inner width
        self.inputs = {n: rng.standard_normal((batch, n), dtype=np.float32) for n in widths}  # (B, C), (B, 4C)
        self.session = self._session(threads)

    def _session(self, threads: int):
        """One ONNX Runtime session running every MatMul of the step (inputs x<K>: (B, K); outputs y<i>)."""
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        batch = next(iter(self.inputs.values())).shape[0]
        inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [batch, k]) for k in sorted(self.inputs)]
        nodes, outputs, initializers = [], [], []
        for i, weight in enumerate(self.weights):
            initializers.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"x{weight.shape[0]}", f"w{i}"], [f"y{i}"]))  # (B, N)
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [batch, weight.shape[1]]))
        graph = helper.make_graph(nodes, "gemm_floor", inputs, outputs, initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.feeds = {f"x{k}": x for k, x in self.inputs.items()}
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def step(self) -> float:
        """Seconds of every GEMM of one step in numpy, in the model's order."""
        start = now_ns()
        for weight in self.weights:
            np.matmul(self.inputs[weight.shape[0]], weight)  # (B, K) @ (K, N)
        return (now_ns() - start) / 1e9

    def step_ort(self) -> float:
        """Seconds of the same GEMMs as one ONNX Runtime run."""
        start = now_ns()
        self.session.run(None, self.feeds)
        return (now_ns() - start) / 1e9


class Floor:
    """Memory read bandwidth and the batch-B GEMM time, both sampled once per round (and the bandwidth alone
    right before each participant: `{"bandwidth_only": true}`)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.gemm = GemmFloor(spec["model_config"], spec["batch"], spec["seed"], spec["threads"])

    def round(self, request: dict[str, Any]) -> dict[str, Any]:
        from .machine import read_bandwidth

        bandwidth = read_bandwidth(self.spec["bandwidth_mib"], self.spec["threads"], passes=3)
        if request.get("bandwidth_only"):
            return {"bandwidth_gbs": bandwidth["gbs"]}
        fastest = {}
        for library, step in (("numpy", self.gemm.step), ("onnxruntime", self.gemm.step_ort)):
            step()  # warm-up: page the weights in, wake the threads
            # A floor is a lower bound and noise only adds time: the round's fastest step, not its median
            # (which would let a busy round raise the floor and flatter every ratio to it).
            fastest[library] = min(step() for _ in range(GEMM_PASSES))
        return {"bandwidth_gbs": bandwidth["gbs"], "gemm_s": min(fastest.values()), "gemm_by_library_s": fastest}


class Decoder:
    """A backend's decode steps at each requested position (batch 1), and at batch B after a short prompt."""

    def __init__(self, backend: Any, spec: dict[str, Any]):
        self.backend, self.seed = backend, spec["seed"]

    def _ids(self, batch: int, length: int) -> np.ndarray:
        from .suite import prompt

        ids, _ = prompt(batch, length, self.seed, self.backend.vocab_size)
        return ids

    def round(self, request: dict[str, Any]) -> dict[str, Any]:
        steps = request["steps"]
        out: dict[str, Any] = {"positions": {}}
        for position in request["positions"]:  # a prompt of P tokens: the first timed step writes position P
            ids = self._ids(1, position)
            out["positions"][str(position)] = self.backend.decode_steps(ids, np.ones_like(ids), steps)
        if request.get("batch"):
            ids = self._ids(request["batch"], request["batch_prompt"])
            out["batch"] = self.backend.decode_steps(ids, np.ones_like(ids), steps)
        return out


def load(spec: dict[str, Any]) -> Any:
    """The participant the spec names."""
    if spec["kind"] == "floor":
        return Floor(spec)
    if spec["kind"] == "ctranslate2":
        from .ctranslate2_peer import CTranslate2Backend

        return Decoder(CTranslate2Backend(spec["folder"], spec["compute_type"], spec["threads"]), spec)
    from .backends import load_backend

    return Decoder(load_backend(spec["backend"], spec["artifacts"], spec["threads"]), spec)


def main(argv: list[str]) -> int:
    """Load, answer {"ready": true}, then one answer line per request line until stdin closes."""
    if len(argv) != 1:
        print("usage: python -m benchmarks.round_worker SPEC.json", file=sys.stderr)
        return 2
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything a library prints goes to the log, never into the answers
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        participant = load(spec)
        answers.write(json.dumps({"ready": True}) + "\n")
        answers.flush()
        for line in sys.stdin:
            answers.write(json.dumps(participant.round(json.loads(line))) + "\n")
            answers.flush()
    except Exception as e:
        traceback.print_exc()
        answers.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        answers.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
