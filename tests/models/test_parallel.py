"""parallelize(device_map) spreads blocks over devices with the same numbers, and refuses bad maps."""

from __future__ import annotations

import pytest
import torch

from .oracle import assert_close, pair


def test_a_cpu_device_map_gives_the_same_numbers():
    model, _ = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (2, 5))
    with torch.no_grad():
        before = model(ids).logits
        model.parallelize({"cpu": [0, 1, 2]})
        assert model.model_parallel
        after = model(ids).logits
        model.deparallelize()
    assert not model.model_parallel
    assert_close(after, before)


@pytest.mark.parametrize(
    "device_map, message",
    [
        ({"cpu": [0, 1]}, r"blocks \[2\] are on no device"),
        ({"cpu": [0, 1, 2, 2]}, r"blocks \[2\] appear on several devices"),
        ({"cpu": [0, 1, 2, 3]}, r"blocks \[3\] do not exist"),
    ],
)
def test_invalid_device_maps_are_refused(device_map, message):
    model, _ = pair("GPT2LMHeadModel", "sdpa")
    with pytest.raises(ValueError, match=message):
        model.parallelize(device_map)


@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason="needs a machine with fewer than 8 GPUs")
def test_devices_that_are_not_there_are_named():
    model, _ = pair("GPT2LMHeadModel", "sdpa")
    with pytest.raises(ValueError, match=r"device_map names (cuda:0, )?cuda:7, but this machine has \d+ CUDA device"):
        model.parallelize({0: [0], 7: [1, 2]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_parallelize_without_a_map_on_a_cpu_machine_says_what_to_pass():
    model, _ = pair("GPT2LMHeadModel", "sdpa")
    with pytest.raises(ValueError, match="this machine has none: pass a device_map"):
        model.parallelize()
