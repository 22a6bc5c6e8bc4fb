import itertools

import numpy as np
import pytest
import torch

import sftune.select.sampling_cdf as sampling_cdf
from sftune.select import uniform_sample_without_replacement, weighted_sample_without_replacement

METHODS = ["keys", "cdf"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def exact_inclusion(weights, k):
    """Inclusion probabilities of successive sampling, by enumerating every ordered draw."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    incl = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), k):
        pr, rem = 1.0, 1.0
        for i in seq:
            pr *= p[i] / rem
            rem -= p[i]
        for i in seq:
            incl[i] += pr
    return incl


def max_z(freq, incl, trials):
    se = np.sqrt(np.maximum(incl * (1 - incl), 1e-12) / trials)
    return float(np.max(np.abs(freq - incl) / se))


def inclusion_frequencies(weights, k, trials, method, seed=123):
    w = torch.tensor(weights, dtype=torch.float32)
    g = gen(seed)
    counts = np.zeros(len(weights))
    for _ in range(trials):
        idx = weighted_sample_without_replacement(w, k, g, method=method)
        assert idx.numel() == k and idx.unique().numel() == k
        counts[idx.numpy()] += 1
    return counts / trials


WEIGHTS = [1.0, 2.0, 3.0, 4.0, 0.5, 9.5]
K = 3


def check_against_alternatives(freq, trials):
    incl = exact_inclusion(WEIGHTS, K)
    z = max_z(freq, incl, trials)
    assert z < 4.5, (freq, incl)
    # The same criterion must reject the two classic mistakes, otherwise the test has no power.
    p = np.asarray(WEIGHTS) / sum(WEIGHTS)
    naive = np.minimum(1.0, K * p)  # "proportional to weight" without the without-replacement correction
    with_repl = 1 - (1 - p) ** K  # k draws with replacement
    assert max_z(freq, naive, trials) > 10
    assert max_z(freq, with_repl, trials) > 10


def test_inclusion_frequencies_keys_match_exact_successive_sampling():
    trials = 4000
    check_against_alternatives(inclusion_frequencies(WEIGHTS, K, trials, "keys"), trials)


def test_inclusion_frequencies_cdf_match_exact_successive_sampling():
    trials = 1500
    check_against_alternatives(inclusion_frequencies(WEIGHTS, K, trials, "cdf"), trials)


def test_cdf_fallback_to_keys_midway_is_still_exact(monkeypatch):
    # One cdf round, then the keys method finishes the sample on the remaining items.
    monkeypatch.setattr(sampling_cdf, "_MAX_ROUNDS", 1)
    trials = 1500
    check_against_alternatives(inclusion_frequencies(WEIGHTS, K, trials, "cdf"), trials)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result(method):
    w = torch.rand(10000) ** 3
    w[::5] = 0
    a = weighted_sample_without_replacement(w, 500, gen(7), method=method)
    b = weighted_sample_without_replacement(w, 500, gen(7), method=method)
    c = weighted_sample_without_replacement(w, 500, gen(8), method=method)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 6, 33, 1000, 1025, 40001])
def test_exactly_k_distinct_ascending_and_zero_weights_never_chosen(method, n):
    g = gen(n)
    w = torch.rand(n, generator=g) ** 4
    w[torch.arange(n) % 3 == 1] = 0
    positive = int((w > 0).sum())
    ks = {0, 1, positive // 2} | ({positive} if n <= 2000 else set())  # k = #positive: exhausts them all
    for k in ks:
        idx = weighted_sample_without_replacement(w, k, g, method=method)
        assert idx.dtype == torch.long and idx.numel() == k
        assert idx.unique().numel() == k
        assert bool((idx[1:] > idx[:-1]).all())
        assert bool((w[idx] > 0).all())


@pytest.mark.parametrize("method", METHODS)
def test_fewer_positive_weights_than_k_raises(method):
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="positive weight"):
        weighted_sample_without_replacement(w, 3, gen(), method=method)
    with pytest.raises(ValueError):
        weighted_sample_without_replacement(w, 6, gen(), method=method)


def test_keys_chunked_equals_single_chunk():
    w = torch.rand(50000) ** 2
    w[100:200] = 0
    for k, chunk in [(300, 1000), (300, 4097), (2000, 500)]:
        a = weighted_sample_without_replacement(w, k, gen(3), chunk_size=chunk, method="keys")
        b = weighted_sample_without_replacement(w, k, gen(3), chunk_size=1 << 22, method="keys")
        assert torch.equal(a, b)


def test_in_place_keys_equal_the_keys_method():
    """weighted_sample_keys_ (keys written over a flat buffer, one exact top-k) draws the sample the keys method
    draws from the same generator state, for any chunking; ties and zero weights included."""
    from sftune.select.sampling import weighted_sample_keys_

    w = torch.rand(300000) ** 3  # large enough for top-k's prefilter path
    w[1000:5000] = 0
    w[7:12] = 0.5  # equal weights
    for k, chunk in [(300, 1 << 22), (300, 4097), (5000, 65536)]:
        a = weighted_sample_keys_(w.clone(), k, gen(5), chunk_size=chunk)
        b = weighted_sample_without_replacement(w, k, gen(5), chunk_size=chunk, method="keys")
        assert torch.equal(a, b)
    hot = torch.tensor([5, 17, 4099, 9998])
    z = torch.zeros(10000)
    z[hot] = 1.0
    assert torch.equal(weighted_sample_keys_(z.clone(), 4, gen()), hot)
    with pytest.raises(ValueError, match="positive weight"):
        weighted_sample_keys_(z.clone(), 5, gen())


def test_keys_k_equal_to_positive_count_returns_exactly_them_for_any_chunking():
    # The -inf keys of zero weights must never displace a finite key across chunk merges.
    w = torch.zeros(10000)
    hot = torch.tensor([5, 17, 4099, 9998])
    w[hot] = 1.0
    for chunk in [7, 100, 1 << 22]:
        idx = weighted_sample_without_replacement(w, 4, gen(), chunk_size=chunk, method="keys")
        assert torch.equal(idx, hot)


@pytest.mark.parametrize("method", METHODS)
def test_beyond_2_pow_24(method):
    n = (1 << 24) + 10
    w = torch.ones(n)
    w[-10:] = 1e9  # these dominate: all ten must be drawn, and their indices are above 2^24
    idx = weighted_sample_without_replacement(w, 50, gen(), method=method)
    assert idx.numel() == 50 and idx.unique().numel() == 50
    assert set(range(n - 10, n)) <= set(idx.tolist())
    assert int(idx.max()) < n


def test_out_argument_and_float64_weights():
    w = torch.rand(5000, dtype=torch.float64)
    out = torch.empty(40, dtype=torch.long)
    for method in METHODS:
        res = weighted_sample_without_replacement(w, 40, gen(1), out=out, method=method)
        assert res is out and out.unique().numel() == 40


def test_heavily_skewed_weights_cdf():
    # Geometric weights: each round finds few new items, exercising folds and the keys fallback.
    w = torch.tensor([0.5**i for i in range(120)], dtype=torch.float64)
    idx = weighted_sample_without_replacement(w, 60, gen(), method="cdf")
    assert idx.unique().numel() == 60
    assert set(range(20)) <= set(idx.tolist())  # the heaviest are drawn with near certainty


def test_uniform_sampler():
    g = gen(11)
    a = uniform_sample_without_replacement(1000, 100, gen(5))
    b = uniform_sample_without_replacement(1000, 100, gen(5))
    assert torch.equal(a, b) and a.unique().numel() == 100 and bool((a[1:] > a[:-1]).all())
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    big = uniform_sample_without_replacement(10, 8, g)  # randperm path
    assert big.unique().numel() == 8
    trials, n, k = 2000, 7, 3
    counts = np.zeros(n)
    for _ in range(trials):
        idx = uniform_sample_without_replacement(n, k, g)
        assert idx.unique().numel() == k
        counts[idx.numpy()] += 1
    incl = np.full(n, k / n)
    assert max_z(counts / trials, incl, trials) < 4.5
    assert uniform_sample_without_replacement(5, 0, g).numel() == 0
    with pytest.raises(ValueError):
        uniform_sample_without_replacement(5, 6, g)
