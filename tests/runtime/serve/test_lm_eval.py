"""lm-evaluation-harness scores through `gpt2-export serve` exactly as through its own Hugging Face backend.

lm-eval (`lm-eval` on PyPI, the `ci` extra) is a client nobody here wrote. Its `local-completions` model sends
each (context, continuation) of a multiple-choice task as token ids with `echo: true, logprobs: 1,
max_tokens: 1` to /v1/completions and sums the echoed prompt log-probabilities of the continuation; its `hf`
model runs transformers 4.57.6 on the checkpoint the export came from. Both run the same local task
(tests/runtime/serve/data/tiny_multiple_choice.jsonl, a `json` dataset: no download, HF_DATASETS_OFFLINE=1).
Tolerance: every request's log-likelihood within 1e-3 (fp32 export), the same greedy flags, the same accuracy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .deps import httpx  # noqa: F401 (first: skips this module without the serve extra)
from .helpers import ServerProcess
from .helpers_net import free_port

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[ci]'")

DATA = Path(__file__).parent / "data" / "tiny_multiple_choice.jsonl"
TASK = "gpt2_export_tiny_mc"
LOGLIKELIHOOD_ATOL = 1e-3

# A multiple-choice task in lm-eval's YAML schema; data_files must be absolute (lm-eval resolves it from cwd).
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """An lm-eval TaskManager that knows only lm-eval's own tasks plus ours, read from a temporary folder."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # the task's data is local; a download attempt must fail, not hang
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lm-eval-task")
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=DATA.resolve()), encoding="utf-8")
    return TaskManager(include_path=str(folder))


def evaluate(model: str, model_args: str, task_manager) -> dict:
    """simple_evaluate on our task with per-request samples logged."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=model, model_args=model_args, tasks=[TASK], task_manager=task_manager,
                           batch_size=1, device="cpu", log_samples=True, bootstrap_iters=0, random_seed=0,
                           numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def per_request(results: dict) -> dict[tuple[int, int], tuple[float, bool]]:
    """(doc_id, choice index) -> (log-likelihood, is_greedy) from logged samples."""
    out = {}
    for sample in results["samples"][TASK]:
        for index, response in enumerate(sample["resps"]):
            loglikelihood, greedy = response[0]
            out[(sample["doc_id"], index)] = (float(loglikelihood), bool(greedy))
    return out


@pytest.mark.slow
def test_local_completions_against_serve_equals_the_hf_backend(serve_exports, task_manager):
    folder = serve_exports["lm-shared"]
    checkpoint = folder.parent / "checkpoint"  # the transformers checkpoint these exports came from (conftest)
    # logits_cache=False: lm-eval 0.4.13's hf backend reuses one forward for requests whose context + continuation
    # tokens are equal but split at different points (doc 0 "the cat sat on the" + " mat." and doc 12 "the cat sat"
    # + " on the mat."), then gathers the shorter continuation from the leading positions of the longer one's
    # logits instead of the trailing ones: -35.883 for doc 0 choice 0 where transformers itself gives -44.382 (and
    # our server -44.382). Without the cache the hf backend scores every request on its own.
    expected = evaluate("hf", f"pretrained={checkpoint},dtype=float32,logits_cache=False", task_manager)

    port = free_port()
    command = [str(Path(sys.executable).parent / "gpt2-export"), "serve", str(folder), "--port", str(port),
               "--max-batch", "4", "--log-level", "warning"]
    server = ServerProcess(folder, port, command=command).wait_healthy()
    try:
        served = evaluate("local-completions",
                          f"model={folder.name},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                          f"tokenizer={checkpoint},num_concurrent=1,max_retries=1,max_length=64", task_manager)
    finally:
        assert server.stop() == 0, server.output()

    want, got = per_request(expected), per_request(served)
    n_docs = sum(1 for _ in DATA.open(encoding="utf-8"))
    assert len(want) == len(got) >= 3 * n_docs and want.keys() == got.keys()
    worst = max(abs(got[key][0] - want[key][0]) for key in want)
    assert worst <= LOGLIKELIHOOD_ATOL, f"max |loglikelihood - hf| = {worst:.2e} > {LOGLIKELIHOOD_ATOL}"
    assert {key: g for key, (_, g) in got.items()} == {key: g for key, (_, g) in want.items()}
    # Log-likelihoods are sums over continuation tokens: distinct, finite and negative, so nothing was stubbed.
    assert all(ll < 0 for ll, _ in got.values()) and len({round(ll, 4) for ll, _ in got.values()}) > n_docs
    assert served["results"][TASK]["acc,none"] == expected["results"][TASK]["acc,none"]
