"""End to end: every zoo model through `mlpack build`, then run by mlrt (in a process where torch
cannot be imported) and by the C++ sample, compared with eager PyTorch (fp32, rtol 1e-4)."""

import pytest

from conftest import assert_matches_eager, run_cpp_sample, run_without_torch

FAST = ["mlp", "small_cnn", "encoder", "resnet18", "mobilenet_v2"]
ZOO = FAST + [pytest.param("resnet50", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_eager_without_torch(name, build_zoo, tmp_path):
    built = build_zoo(name)
    outputs = run_without_torch(built.bundle, built.inputs_npz, tmp_path)
    assert_matches_eager(outputs, built.reference)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_eager_in_cpp(name, build_zoo, cpp_sample, tmp_path):
    built = build_zoo(name)
    assert_matches_eager(run_cpp_sample(cpp_sample, built.bundle, built.inputs, tmp_path), built.reference)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_memory_plan_near_lower_bound(name, build_zoo):
    plan = build_zoo(name).manifest["memory_plan"]
    assert plan["lower_bound_bytes"] > 0
    assert plan["lower_bound_bytes"] <= plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"]
    assert plan["arena_bytes"] <= plan["sum_bytes"]
    # no two buffers that are alive at the same time may share bytes
    bufs = plan["buffers"]
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if a["first"] <= b["last"] and b["first"] <= a["last"]:
                assert a["offset"] + a["size"] <= b["offset"] or b["offset"] + b["size"] <= a["offset"]
