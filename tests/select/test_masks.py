import io

import numpy as np
import pytest
import torch

from sftune.select import BitMask, FlatBuffer, bernoulli_mask_, bernoulli_threshold, pack_bits, unpack_bits


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Bernoulli
def test_threshold_resolution():
    assert bernoulli_threshold(0.3) == 19661  # round(0.3 * 65536): p_eff = 0.3000030...
    assert abs(bernoulli_threshold(0.3) / 65536 - 0.3) < 1e-5
    assert bernoulli_threshold(0.3, bits=32) == round(0.3 * 2**32)
    assert bernoulli_threshold(0.0) == 0 and bernoulli_threshold(1.0) == 65536
    assert bernoulli_threshold(0.3, bits=8) == 77
    with pytest.raises(ValueError):
        bernoulli_threshold(0.5, bits=12)


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("p", [0.2, 0.3, 0.5, 0.97])
def test_bernoulli_mean_close_to_p(p, bits):
    n = 1_000_003
    out = torch.empty(n, dtype=torch.bool)
    bernoulli_mask_(out, p, gen(1), bits=bits)
    p_eff = bernoulli_threshold(p, bits) / 2**bits
    se = (p_eff * (1 - p_eff) / n) ** 0.5
    assert abs(out.float().mean().item() - p_eff) < 5 * se


@pytest.mark.parametrize("n", [100_001, (1 << 21) + 13])  # one stream / two half streams (CPU split)
def test_bernoulli_same_generator_same_mask_and_chunk_independent(n):
    a = bernoulli_mask_(torch.empty(n, dtype=torch.bool), 0.3, gen(5))
    b = bernoulli_mask_(torch.empty(n, dtype=torch.bool), 0.3, gen(5), chunk_size=1000)
    c = bernoulli_mask_(torch.empty(n, dtype=torch.bool), 0.3, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    half = n // 2  # the halves are not copies of each other (independent streams)
    assert not torch.equal(a[:1000], a[half + 8 : half + 1008])
    p_eff = bernoulli_threshold(0.3) / 65536
    assert abs(a.float().mean().item() - p_eff) < 5 * (p_eff * (1 - p_eff) / n) ** 0.5
    g = gen(5)  # successive calls continue the stream
    d1 = bernoulli_mask_(torch.empty(1000, dtype=torch.bool), 0.3, g)
    d2 = bernoulli_mask_(torch.empty(1000, dtype=torch.bool), 0.3, g)
    assert not torch.equal(d1, d2)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float16, torch.bfloat16, torch.uint8])
def test_bernoulli_fills_out_in_place_any_dtype(dtype):
    out = torch.full((37, 41), 7, dtype=dtype) if dtype != torch.bool else torch.zeros(37, 41, dtype=dtype)
    ptr = out.data_ptr()
    res = bernoulli_mask_(out, 0.4, gen(2))
    assert res is out and out.data_ptr() == ptr
    ref = bernoulli_mask_(torch.empty(37, 41, dtype=torch.bool), 0.4, gen(2))
    assert torch.equal(out.to(torch.bool), ref)
    assert set(out.float().unique().tolist()) <= {0.0, 1.0}


def test_bernoulli_non_contiguous_and_extremes():
    base = torch.zeros(20, 30)
    view = base.t()  # non-contiguous
    bernoulli_mask_(view, 0.5, gen(3))
    ref = bernoulli_mask_(torch.empty(30, 20), 0.5, gen(3))
    assert torch.equal(view, ref)
    assert not bernoulli_mask_(torch.ones(100, dtype=torch.bool), 0.0, gen()).any()
    assert bernoulli_mask_(torch.zeros(100, dtype=torch.bool), 1.0, gen()).all()
    # below the 16-bit resolution (p < 2^-17) the mask is empty: documented quantisation
    assert not bernoulli_mask_(torch.ones(1000, dtype=torch.bool), 1e-6, gen()).any()


# ----------------------------------------------------------------------------- bit packing
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 65, 1000, 100_003])
def test_pack_unpack_round_trip_matches_numpy_packbits(n):
    m = torch.rand(n, generator=gen(n)) < 0.37
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert np.array_equal(packed.numpy(), np.packbits(m.numpy(), bitorder="little"))
    assert torch.equal(unpack_bits(packed, n), m)


def test_pack_shapes_and_unaligned_views():
    m = torch.rand(13, 17, generator=gen()) < 0.5
    assert torch.equal(unpack_bits(pack_bits(m), m.numel(), m.shape), m)
    big = torch.rand(1000, generator=gen(1)) < 0.5
    for off in [1, 3, 5, 8]:
        v = big[off : off + 333]
        assert torch.equal(unpack_bits(pack_bits(v), 333), v)
    assert torch.equal(unpack_bits(pack_bits(torch.ones(16, dtype=torch.bool)), 16), torch.ones(16, dtype=torch.bool))
    with pytest.raises(TypeError):
        pack_bits(torch.ones(3))


def test_bitmask_round_trip_count_and_state_dict():
    m = torch.rand(31, 9, generator=gen(4)) < 0.3
    bm = BitMask.from_bool(m)
    assert bm.nbytes == (31 * 9 + 7) // 8 and bm.numel() == 279
    assert torch.equal(bm.to_bool(), m)
    assert int(bm.count()) == int(m.sum())
    buf = io.BytesIO()
    torch.save(bm.state_dict(), buf)
    buf.seek(0)
    bm2 = BitMask.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(bm2.to_bool(), m)


# ----------------------------------------------------------------------------- flat buffer
def test_flat_buffer_views_share_storage():
    shapes = {"a.weight": (3, 4), "a.bias": (4,), "b": (2, 2, 2)}
    fb = FlatBuffer(shapes)
    assert fb.numel == 24 and fb.offsets == {"a.weight": 0, "a.bias": 12, "b": 16}
    assert fb["a.weight"].shape == (3, 4) and fb.segment("b") == (16, 24)
    fb["a.bias"].fill_(2.0)
    assert fb.data[12:16].eq(2.0).all() and fb.data[:12].eq(0).all()
    ptr = fb.data.data_ptr()
    fb.zero_()
    assert fb.data.data_ptr() == ptr and fb["a.bias"].eq(0).all()
    params = {"x": torch.randn(5, 2), "y": torch.randn(3)}
    fb2 = FlatBuffer.like(params).copy_from(params)
    assert torch.equal(fb2["x"], params["x"]) and torch.equal(fb2.data[10:], params["y"])


def test_flat_buffer_split_indices_and_masks():
    fb = FlatBuffer({"a": (2, 3), "b": (4,), "c": (5,)})
    idx = torch.tensor([14, 0, 6, 5, 11])
    parts = fb.split_indices(idx)
    assert parts["a"].tolist() == [0, 5] and parts["b"].tolist() == [0] and parts["c"].tolist() == [1, 4]
    masks = fb.masks_from_indices(idx)
    assert masks["a"].shape == (2, 3) and masks["a"].sum() == 2 and bool(masks["a"][1, 2])
    empty = fb.split_indices(torch.tensor([1]))
    assert empty["b"].numel() == 0 and empty["c"].numel() == 0


def test_split_sorted_in_place_gives_the_same_indices_as_views():
    from sftune.select import split_sorted

    idx = torch.tensor([0, 5, 6, 10, 11, 14])
    bounds = torch.tensor([0, 6, 10, 15])
    copied = split_sorted(idx, ["a", "b", "c"], [0, 6, 10], bounds)
    assert idx.tolist() == [0, 5, 6, 10, 11, 14]  # by default the global indices stay
    viewed = split_sorted(idx, ["a", "b", "c"], [0, 6, 10], bounds, in_place=True)
    assert {n: v.tolist() for n, v in viewed.items()} == {"a": [0, 5], "b": [0], "c": [0, 1, 4]}
    assert all(torch.equal(copied[n], viewed[n]) for n in copied)
    assert all(v.untyped_storage().data_ptr() == idx.untyped_storage().data_ptr() for v in viewed.values())
