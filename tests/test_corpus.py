"""The CI part of the real-model corpus (tests/corpus.py): architectures written by others, built
with `mlpack build`, run by mlrt in a process that cannot import torch, compared with eager
PyTorch relative to the output's largest value (rtol 1e-4). `python benchmarks/run_corpus.py`
runs the whole corpus."""

import numpy as np
import pytest
import torch

import corpus
from conftest import flat_outputs, run_without_torch

RTOL = 1e-4


@pytest.mark.parametrize("name", corpus.CI)
def test_corpus_model_matches_eager_without_torch(name, tmp_path):
    import mlpack

    model, inputs = corpus.make(name)
    with torch.no_grad():
        reference = flat_outputs(model(*inputs))
    bundle = tmp_path / f"{name}.bundle"
    mlpack.build(model, inputs, bundle)
    npz = tmp_path / "inputs.npz"
    np.savez(npz, *[x.numpy() for x in inputs])
    actual = run_without_torch(bundle, npz, tmp_path)
    assert len(actual) == len(reference)
    for a, r in zip(actual, reference):
        assert a.shape == r.shape and a.dtype == r.dtype
        scale = float(np.abs(r).max())
        assert scale > 0, "a degenerate (all-zero) reference proves nothing"
        err = float(np.abs(a.astype(np.float64) - r).max()) / scale
        assert err <= RTOL, f"{name}: max error {err:.2e} of the output's scale {scale:.3g}"


def test_corpus_spans_the_families_and_sources():
    """The corpus is at least 30 architectures by others, from all three libraries."""
    assert len(corpus.NAMES) >= 30
    assert {e.source for e in corpus.ENTRIES.values()} == {"torchvision", "timm", "transformers"}
    assert set(corpus.CI) <= set(corpus.NAMES)
