import numpy as np
import pytest
import torch

import sftune.select.topk as topk_mod
from sftune.select import (
    global_threshold,
    global_threshold_mask,
    kth_largest_value,
    top_fraction_mask,
    topk_indices,
)


def reference_topk(x: torch.Tensor, k: int) -> np.ndarray:
    """Top-k under (value desc, index asc), ascending indices, via a stable sort."""
    v = x.reshape(-1).numpy()
    order = np.lexsort((np.arange(v.size), -v.astype(np.float64)))
    return np.sort(order[:k])


def data(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, generator=g)
    if kind == "ties":
        return torch.randint(0, 7, (n,), generator=g).float()
    if kind == "heavy":
        return torch.randn(n, generator=g).pow_(4)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["normal", "ties", "heavy"])
@pytest.mark.parametrize("n,ks", [(1000, [1, 10, 999, 1000]), (300_001, [1, 7, 150, 5000])])
def test_topk_indices_value_set_equals_torch_topk(kind, n, ks):
    x = data(kind, n)
    for k in ks:
        idx = topk_indices(x, k)
        assert idx.dtype == torch.long and idx.numel() == k and idx.unique().numel() == k
        assert bool((idx[1:] > idx[:-1]).all())
        assert torch.equal(torch.sort(x[idx]).values, torch.sort(torch.topk(x, k).values).values)
        # and the tie rule (lower index wins) picks exactly the reference set
        assert np.array_equal(idx.numpy(), reference_topk(x, k))


def test_topk_indices_edge_cases():
    x = torch.zeros(100)
    assert torch.equal(topk_indices(x, 5), torch.arange(5))  # all tied: lowest indices
    assert topk_indices(x, 0).numel() == 0
    assert torch.equal(topk_indices(x, 100), torch.arange(100))
    with pytest.raises(ValueError):
        topk_indices(x, 101)
    m = torch.randn(40, 50)
    assert torch.equal(topk_indices(m, 30), topk_indices(m.reshape(-1), 30))
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(torch.tensor([1.0, float("nan"), 3.0]), 2)


def test_topk_result_does_not_depend_on_generator():
    x = data("ties", 200_000, seed=3)
    a = topk_indices(x, 321, generator=torch.Generator().manual_seed(1))
    b = topk_indices(x, 321, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_topk_prefilter_miss_falls_back_to_exact(monkeypatch):
    # Force the subsample threshold far too high: the candidate set is too small and the exact path runs.
    x = data("normal", 200_000, seed=4)
    real = topk_mod._indices_ge
    monkeypatch.setattr(topk_mod, "_indices_ge", lambda v, t: real(v, t + 10.0))
    idx = topk_indices(x, 500)
    assert np.array_equal(idx.numpy(), reference_topk(x, 500))


@pytest.mark.parametrize("n", [10, 64 * 20, 64 * 20 + 13, 100_003])
def test_indices_ge_matches_nonzero(n):
    x = data("heavy", n, seed=n)
    for q in [0.0, 0.5, 0.99, 0.9999]:
        t = torch.quantile(x[: min(n, 1 << 16)], q)
        assert torch.equal(topk_mod._indices_ge(x, t), (x >= t).nonzero().squeeze(1))


@pytest.fixture(params=["sort", "bracket"])
def order_stat_path(request, monkeypatch):
    """Run a test once with the plain-sort path and once with subsample bracketing forced on."""
    if request.param == "bracket":
        monkeypatch.setattr(topk_mod, "_SORT_MAX", 64)
        monkeypatch.setattr(topk_mod, "_BRACKET_SAMPLE", 512)
    return request.param


@pytest.mark.parametrize("shape", [(3, 5), (300, 1000), (600, 1000)])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_top_fraction_mask_keeps_exactly_keep(shape, kind, order_stat_path):
    n = int(np.prod(shape))
    x = data(kind, n, seed=n).view(shape)
    for p in [0.1, 0.3, 0.5]:
        keep = int(np.ceil((1 - p) * n))
        m = top_fraction_mask(x, keep)
        assert m.shape == x.shape and m.dtype == torch.bool
        assert int(m.sum()) == keep
        assert np.array_equal(m.reshape(-1).nonzero().squeeze(1).numpy(), reference_topk(x, keep))
    assert int(top_fraction_mask(x, 0).sum()) == 0 and bool(top_fraction_mask(x, n).all())


def test_kth_largest_value_over_list(order_stat_path):
    parts = [data("normal", 70_000, 1), data("ties", 50_000, 2), torch.empty(0), data("heavy", 13, 3)]
    allv = torch.sort(torch.cat(parts), descending=True).values
    for r in [1, 2, 1000, 60_000, 120_013]:
        assert kth_largest_value(parts, r).item() == allv[r - 1].item()


def reference_percentile(tensors, keep_fraction):
    # What Child-Tuning's reference computes (np.append of the flattened fp32 scores, then percentile).
    allv = np.concatenate([t.reshape(-1).numpy() for t in tensors])
    return np.percentile(allv, (1 - keep_fraction) * 100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [[(7,), (3, 4)], [(10, 10), (1,), (33, 3)], [(70, 1000), (30, 1000), (5,)]])
def test_global_threshold_matches_numpy_percentile(dtype, sizes, order_stat_path):
    g = torch.Generator().manual_seed(sum(int(np.prod(s)) for s in sizes))
    for kind in ["normal", "ties"]:
        tensors = [
            (torch.rand(s, generator=g) if kind == "normal" else torch.randint(0, 9, s, generator=g).float())
            .square()
            .to(dtype)
            for s in sizes
        ]
        for p in [0.1, 0.2, 0.3, 0.5, 0.9, 1.0, 0.0, 1 / 3]:
            ref = reference_percentile(tensors, p)
            tau = global_threshold(tensors, p)
            assert tau.dtype == dtype and tau.item() == float(ref), (p, tau.item(), ref)
            masks = global_threshold_mask(tensors, p)
            for t, m in zip(tensors, masks):
                assert m.shape == t.shape
                assert np.array_equal(m.numpy(), t.numpy() >= ref)


def test_global_threshold_lerp_rounding_like_numpy():
    # Values where the interpolation weight is tiny or huge exercise NumPy's two-sided lerp exactly.
    base = np.array([1.0, 1.0000001, 2.0, 3.0, 1e-30, 7.5], dtype=np.float32)
    t = [torch.from_numpy(base)]
    for p in np.linspace(0, 1, 41).tolist():  # Python floats, as the reference passes reserve_p
        assert global_threshold(t, p).item() == float(np.percentile(base, (1 - p) * 100))


def test_bracket_miss_falls_back_to_exact(monkeypatch):
    # An adversarial "subsample" (always the maximum) brackets the wrong place: the counts must notice
    # and the fallback must give the exact answer.
    monkeypatch.setattr(topk_mod, "_SORT_MAX", 64)
    monkeypatch.setattr(
        topk_mod, "_random_indices", lambda n, m, g, d: torch.zeros(m, dtype=torch.long, device=d)
    )
    x = data("normal", 5000, 9)
    x[0] = 100.0
    assert kth_largest_value(x, 2500).item() == torch.sort(x, descending=True).values[2499].item()
    m = top_fraction_mask(x, 1234)
    assert np.array_equal(m.nonzero().squeeze(1).numpy(), reference_topk(x, 1234))


def test_global_threshold_rejects_mixed_dtypes():
    with pytest.raises(ValueError):
        global_threshold([torch.rand(3), torch.rand(3, dtype=torch.float64)], 0.2)
