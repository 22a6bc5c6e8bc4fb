"""Benchmark the selection kernels against the obvious references, at model scale.

    python bench/selection.py --n 20_000_000 --k 16_000 --repeats 3 --json /tmp/sel.json

Defaults are roberta-base sized (n = 125M candidate entries, k = 102k = its BitFit count). Prints one row
per kernel: our median wall time, the reference's, and the ratio reference / ours (> 1: we are faster).
NumPy's ``choice(replace=False, p=...)`` is run once (it takes seconds and 32 B/entry). ``--check`` also
asserts a few exactness properties on the chosen device (handy on a GPU machine). Not a test: timings
depend on the machine and its load; ``--threads`` pins torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sftune.optim import MaskedAdamW, masked_adamw_step_  # noqa: E402
from sftune.select import (  # noqa: E402
    bernoulli_mask_,
    global_threshold_mask,
    pack_bits,
    top_fraction_mask,
    topk_indices,
    uniform_sample_without_replacement,
    unpack_bits,
    weighted_sample_without_replacement,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def matrix_split(n: int, rows: int = 768, cols: int = 3072) -> list[tuple[int, int]]:
    """Shapes of transformer-like weight matrices covering about n entries."""
    shapes = []
    left = n
    while left >= rows * cols:
        shapes.append((rows, cols))
        left -= rows * cols
    if left:
        shapes.append((left,))
    return shapes


def run_checks(dev: torch.device) -> None:
    """Exactness properties on ``dev`` (the unit tests cover CPU; this covers e.g. CUDA)."""
    import numpy as np

    g = torch.Generator(device=dev).manual_seed(0)
    small = torch.rand(1 << 20, device=dev).pow_(3)
    small[::7] = 0
    for meth in ("cdf", "keys"):
        s = weighted_sample_without_replacement(small, 1000, g, method=meth)
        assert s.numel() == 1000 and s.unique().numel() == 1000 and bool((small[s] > 0).all())
        a = weighted_sample_without_replacement(small, 50, torch.Generator(device=dev).manual_seed(3), method=meth)
        b = weighted_sample_without_replacement(small, 50, torch.Generator(device=dev).manual_seed(3), method=meth)
        assert torch.equal(a, b)
        # inclusion frequencies vs the exact successive-sampling probabilities (n = 4, k = 2)
        wt = torch.tensor([1.0, 2.0, 3.0, 6.0], device=dev)
        p = (wt / wt.sum()).tolist()
        incl = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
        cnt = torch.zeros(4, device=dev)
        trials = 1500
        for _ in range(trials):
            cnt[weighted_sample_without_replacement(wt, 2, g, method=meth)] += 1
        z = (cnt.cpu().numpy() / trials - np.array(incl)) / np.sqrt(np.array(incl) * (1 - np.array(incl)) / trials)
        assert np.abs(z).max() < 4.5, (meth, z)
    if dev.type == "cpu":  # CPU's mt19937 stream is per element; CUDA's Philox offsets per kernel launch
        a = weighted_sample_without_replacement(small, 300, torch.Generator(device=dev).manual_seed(4),
                                                chunk_size=5000, method="keys")
        b = weighted_sample_without_replacement(small, 300, torch.Generator(device=dev).manual_seed(4),
                                                method="keys")
        assert torch.equal(a, b)
    u = uniform_sample_without_replacement(1 << 20, 1000, g, dev)
    assert u.unique().numel() == 1000
    ties = torch.randint(0, 5, (300_000,), device=dev).float()
    for x in (small, ties):
        for k in (1, 77, 5000):
            ti = topk_indices(x, k)
            assert torch.equal(torch.sort(x[ti]).values, torch.sort(torch.topk(x, k).values).values)
            ref = np.sort(np.lexsort((np.arange(x.numel()), -x.cpu().numpy()))[:k])
            assert np.array_equal(ti.cpu().numpy(), ref)
    mk = top_fraction_mask(ties.view(300, 1000), 123_456)
    assert int(mk.sum()) == 123_456
    mats = [small[: 600_000].view(600, 1000), small[600_000:]]
    for keep in (0.1, 0.3):
        ref = np.percentile(small.cpu().numpy(), (1 - keep) * 100)
        masks = global_threshold_mask(mats, keep)
        assert all(np.array_equal(m.cpu().numpy(), t.cpu().numpy() >= ref) for m, t in zip(masks, mats))
    bern = bernoulli_mask_(torch.empty(1 << 22, dtype=torch.bool, device=dev), 0.3, g)
    assert abs(bern.float().mean().item() - 0.3) < 5e-3
    pk = torch.rand(100_003, device=dev) < 0.5
    assert torch.equal(unpack_bits(pack_bits(pk), pk.numel()), pk)
    # MaskedAdamW with all-true masks vs torch.optim.AdamW (single-tensor path) on this device
    torch.manual_seed(0)
    m1 = torch.nn.Linear(64, 32).to(dev)
    m2 = torch.nn.Linear(64, 32).to(dev)
    m2.load_state_dict(m1.state_dict())
    ref_opt = torch.optim.AdamW(m1.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    opt = MaskedAdamW(m2.parameters(), lr=1e-2, weight_decay=0.01)
    for step in range(5):
        gg = torch.Generator(device=dev).manual_seed(step)
        for pa, pb in zip(m1.parameters(), m2.parameters()):
            pa.grad = torch.randn(pa.shape, generator=gg, device=dev)
            pb.grad = pa.grad.clone()
            mask = torch.ones_like(pb, dtype=torch.bool) if step % 2 else torch.arange(pb.numel(), device=dev)
            opt.set_mask(pb, mask)
        ref_opt.step()
        opt.step()
    same = all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    close = all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(m1.parameters(), m2.parameters()))
    assert close
    print(f"checks passed on {dev} (MaskedAdamW bitwise equal to AdamW: {same})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=lambda s: int(s.replace("_", "")), default=125_000_000)
    ap.add_argument("--k", type=lambda s: int(s.replace("_", "")), default=102_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--keep", type=float, default=0.2, help="fraction kept: Child-Tuning D / F, DPS (1-p)")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--skip-keys", action="store_true", help="skip the (slow on CPU) keys sampler")
    ap.add_argument("--check", action="store_true", help="first assert exactness properties on the device")
    ap.add_argument("--check-only", action="store_true", help="only run the checks")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n, k, R = args.n, args.k, args.repeats
    if args.check or args.check_only:
        run_checks(dev)
        if args.check_only:
            return
    g = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict] = []

    def record(name, ours, ref=None, ref_name=None, **extra):
        row = {"kernel": name, "ours_ms": ours, "ref_ms": ref, "ref": ref_name, **extra}
        row["ratio"] = (ref / ours) if (ref is not None and ours > 0) else None
        rows.append(row)
        r = f"{row['ratio']:8.2f}x" if row["ratio"] is not None else "        -"
        refs = f"{ref:10.1f}" if ref is not None else "         -"
        print(f"{name:38s} {ours:10.1f} {refs} {r}  {ref_name or ''}", flush=True)

    print(f"n={n:,} k={k:,} device={dev} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'kernel':38s} {'ours ms':>10s} {'ref ms':>10s} {'ref/ours':>9s}  reference")

    # Importance-like heavy-tailed weights (I^2 of |mu * W * g|-like products).
    gw = torch.Generator(device=dev).manual_seed(1)
    w = torch.randn(n, generator=gw, device=dev).mul_(torch.randn(n, generator=gw, device=dev)).square_()

    # ---------------------------------------------------------------- weighted sampling
    t_cdf = timeit(lambda: weighted_sample_without_replacement(w, k, g, method="cdf"), dev, R)
    t_keys = None
    if not args.skip_keys:
        t_keys = timeit(lambda: weighted_sample_without_replacement(w, k, g, method="keys"), dev, R)
    t_np = None
    if not args.skip_numpy and dev.type == "cpu":
        import numpy as np

        p = w.double().div_(w.double().sum()).numpy()
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        rng.choice(n, k, replace=False, p=p)
        t_np = (time.perf_counter() - t0) * 1e3
        del p
    record("weighted sample (cdf)", t_cdf, t_np, "numpy choice(replace=False, p)")
    if t_keys is not None:
        record("weighted sample (keys, chunked ES)", t_keys, t_np, "numpy choice(replace=False, p)")
    record("uniform sample (Random Tuning)", timeit(lambda: uniform_sample_without_replacement(n, k, g, dev), dev, R))

    # ---------------------------------------------------------------- top-k
    t_ours = timeit(lambda: topk_indices(w, k), dev, R)
    t_ref = timeit(lambda: torch.topk(w, k), dev, R)
    record("top-k (prefiltered, exact)", t_ours, t_ref, "torch.topk")

    # ---------------------------------------------------------------- Child-Tuning D global threshold
    shapes = matrix_split(n)
    mats, off = [], 0
    for s in shapes:
        m = math.prod(s)
        mats.append(w[off : off + m].view(s))
        off += m
    t_ours = timeit(lambda: global_threshold_mask(mats, args.keep), dev, R)
    t_ref = None
    if not args.skip_numpy and dev.type == "cpu":
        import numpy as np

        def np_ref():
            allv = np.concatenate([t.reshape(-1).numpy() for t in mats])  # without the quadratic append
            tau = np.percentile(allv, (1 - args.keep) * 100)
            return [t >= float(tau) for t in mats]

        t_ref = timeit(np_ref, dev, 1, warmup=0)
    record("global threshold mask (Child-Tuning D)", t_ours, t_ref, "np.percentile on concat + compare")

    # ---------------------------------------------------------------- DPS per-matrix top fraction
    keep_of = lambda m: math.ceil(args.keep * m.numel())  # noqa: E731
    t_ours = timeit(lambda: [top_fraction_mask(m, keep_of(m)) for m in mats], dev, R)

    def kth_ref():
        out = []
        for m in mats:
            flat = m.reshape(-1)
            v = torch.kthvalue(flat, flat.numel() - keep_of(m) + 1).values
            out.append(m >= v)
        return out

    t_ref = timeit(kth_ref, dev, R)
    record("top-fraction masks per matrix (DPS)", t_ours, t_ref, "kthvalue + compare (not tie-exact)")
    bm = torch.empty(n, dtype=torch.bool, device=dev)
    t_pack = timeit(lambda: pack_bits(bm), dev, R)
    record("pack_bits (1 bit/entry)", t_pack)

    # ---------------------------------------------------------------- Bernoulli masks (Child-Tuning F)
    outf = torch.empty(n, device=dev)
    t_ours = timeit(lambda: bernoulli_mask_(outf, args.keep, g), dev, R)
    t_ref = timeit(lambda: outf.bernoulli_(args.keep, generator=g), dev, R)
    record("Bernoulli mask, float out (16-bit p)", t_ours, t_ref, "Tensor.bernoulli_")
    outb = torch.empty(n, dtype=torch.bool, device=dev)
    t_ref = timeit(lambda: torch.lt(outf.uniform_(generator=g), args.keep, out=outb), dev, R)
    t_ours = timeit(lambda: bernoulli_mask_(outb, args.keep, g), dev, R)
    record("Bernoulli mask, bool out (16-bit p)", t_ours, t_ref, "uniform_ + lt (preallocated)")
    t_ours = timeit(lambda: bernoulli_mask_(outb, args.keep, g, bits=8), dev, R)
    record("Bernoulli mask, bool out (8-bit p)", t_ours, t_ref, "uniform_ + lt (preallocated)")
    del outf, outb, bm

    # ---------------------------------------------------------------- exact masked AdamW
    del w, mats
    param = torch.nn.Parameter(torch.randn(n, device=dev) * 0.02)
    param.grad = torch.randn(n, device=dev) * 1e-3
    ref_opt = torch.optim.AdamW([param], lr=1e-5, weight_decay=0.01, fused=True)
    t_ref = timeit(ref_opt.step, dev, R)
    del ref_opt
    m = torch.zeros_like(param)
    v = torch.zeros_like(param)
    c = torch.zeros(n, dtype=torch.int16, device=dev)
    idx = uniform_sample_without_replacement(n, k, g, dev)
    with torch.no_grad():
        t_ours = timeit(lambda: masked_adamw_step_(param, param.grad, m, v, c, idx, 1e-5, 0.9, 0.999, 1e-8, 0.01),
                        dev, R)
    record("masked AdamW, sparse (k indices)", t_ours, t_ref, "AdamW(fused=True) dense")
    mask = torch.empty(n, dtype=torch.bool, device=dev)
    bernoulli_mask_(mask, 0.7, g)
    with torch.no_grad():
        t_ours = timeit(lambda: masked_adamw_step_(param, param.grad, m, v, c, mask, 1e-5, 0.9, 0.999, 1e-8, 0.01),
                        dev, R)
    record("masked AdamW, dense mask (70%)", t_ours, t_ref, "AdamW(fused=True) dense")
    opt = MaskedAdamW([param], lr=1e-5, weight_decay=0.01, fused=True)
    t_ours = timeit(opt.step, dev, R)
    record("MaskedAdamW(fused=True), no mask", t_ours, t_ref, "AdamW(fused=True) dense")
    del opt, m, v, c, mask

    if args.json:
        meta = {"n": n, "k": k, "device": str(dev), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                "repeats": R}
        if dev.type == "cuda":
            meta["gpu"] = torch.cuda.get_device_name(dev)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
