"""Benchmark the fedras_jax.quantize K-Means and the vmapped encoder.

Part 1: this K-Means (jitted Lloyd) vs scikit-learn
``KMeans(algorithm="lloyd", n_init=1, init=<same centroids>, max_iter=M,
tol=0)`` on the same data, same k-means++ initial centroids (drawn once with
``sklearn.cluster.kmeans_plusplus``) and the same iteration cap. Reported:
median wall time of each (compile time excluded, reported separately), the
ratio sklearn/jax (> 1 = JAX faster), the inertia ratio jax/sklearn and the
iteration counts. Timed runs of both libraries are interleaved so machine
noise hits both alike.

Part 2: ``encode`` for C client matrices ``[rows, d]`` with per-client budgets:
one ``jit(vmap(encode))`` call vs C sequential calls of one jitted
single-client ``encode``.

Usage::

    python -m experiments.bench_quantizer --quick
    python -m experiments.bench_quantizer             # full grid
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax import quantize as q


def _data(n, d, k, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((2 * k, d)) * 2.0
    lab = rng.integers(0, 2 * k, n)
    return (centers[lab] + rng.standard_normal((n, d))).astype(np.float32)


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_kmeans(sizes, ks, d, iters, repeats, seed=0):
    from sklearn.cluster import KMeans, kmeans_plusplus

    rows = []
    for n in sizes:
        for k in ks:
            if k >= n:
                continue
            x = _data(n, d, k, seed)
            c0, _ = kmeans_plusplus(x, k, random_state=seed)
            c0 = c0.astype(np.float32)
            xj, cj = jnp.asarray(x), jnp.asarray(c0)
            key = jax.random.PRNGKey(seed)

            def run_jax():
                r = q.kmeans(xj, key, max_k=k, init_centroids=cj, max_iters=iters, tol=0.0)
                jax.block_until_ready(r)
                return r

            t = time.perf_counter()
            res = run_jax()  # first call: trace + compile + run
            first = time.perf_counter() - t
            km = KMeans(k, init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
            km.fit(x)  # warm-up (thread pools, BLAS)
            tj, ts = [], []
            for _ in range(repeats):  # interleaved
                tj.append(_median_time(run_jax, 1))
                ts.append(_median_time(lambda: km.fit(x), 1))
            t_jax, t_sk = statistics.median(tj), statistics.median(ts)
            rows.append(
                dict(
                    n=n,
                    k=k,
                    t_jax=t_jax,
                    t_sk=t_sk,
                    speedup=t_sk / t_jax,
                    inertia_ratio=float(res.inertia) / km.inertia_,
                    it_jax=int(res.iters),
                    it_sk=int(km.n_iter_),
                    compile=max(first - t_jax, 0.0),
                )
            )
            r = rows[-1]
            print(
                f"| {n:>7} | {k:>4} | {r['t_jax']*1e3:9.1f} | {r['t_sk']*1e3:9.1f} | "
                f"{r['speedup']:6.2f} | {r['inertia_ratio']:.5f} | {r['it_jax']:>3}/{r['it_sk']:<3} | "
                f"{r['compile']:6.2f} |",
                flush=True,
            )
    return rows


def bench_vmap(clients, n_rows, d, max_k, repeats, seed=0):
    rng = np.random.default_rng(seed)
    gs = jnp.asarray(rng.standard_normal((clients, n_rows, d)), jnp.float32)
    full = q.payload_bits(max_k, n_rows, d)
    budgets = jnp.asarray(rng.integers(full // 8, full + 1, clients), jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(seed), clients)
    tau = 0.7

    single = jax.jit(lambda g, k, b: q.encode(g, k, budget_bits=b, max_k=max_k, tau=tau))
    batched = jax.jit(jax.vmap(lambda g, k, b: q.encode(g, k, budget_bits=b, max_k=max_k, tau=tau)))

    t = time.perf_counter()
    jax.block_until_ready(batched(gs, keys, budgets))
    c_b = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(single(gs[0], keys[0], budgets[0]))
    c_s = time.perf_counter() - t

    def run_b():
        return jax.block_until_ready(batched(gs, keys, budgets))

    def run_s():
        out = [single(gs[i], keys[i], budgets[i]) for i in range(clients)]
        return jax.block_until_ready(out)

    tb, tsq = [], []
    for _ in range(repeats):
        tb.append(_median_time(run_b, 1))
        tsq.append(_median_time(run_s, 1))
    t_b, t_s = statistics.median(tb), statistics.median(tsq)
    pb = run_b()
    assert bool(jnp.all(pb.bits <= budgets))
    print(f"| vmap({clients}) x [{n_rows}, {d}], max_k={max_k} | {t_b*1e3:9.1f} | {max(c_b - t_b, 0):6.2f} |")
    print(f"| {clients} sequential jitted calls          | {t_s*1e3:9.1f} | {max(c_s, 0):6.2f} |")
    print(f"speedup vmap vs sequential: {t_s / t_b:.2f}x; mean actions {float(pb.num_actions.mean()):.2f}, "
          f"mean bits/budget {float((pb.bits / budgets).mean()):.3f}")
    return dict(t_vmap=t_b, t_seq=t_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes only (n<=20000, K<=64)")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--ks", type=int, nargs="*", default=None)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=20, help="Lloyd iteration cap for both")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--client-rows", type=int, default=512)
    p.add_argument("--client-max-k", type=int, default=16)
    p.add_argument("--skip-kmeans", action="store_true")
    p.add_argument("--skip-vmap", action="store_true")
    a = p.parse_args(argv)
    sizes = a.sizes or ([1000, 20000] if a.quick else [1000, 20000, 200000])
    ks = a.ks or ([16, 64] if a.quick else [16, 64, 256])
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
          f"d={a.dim}, iteration cap {a.iters}, median of {a.repeats}")
    if not a.skip_kmeans:
        print("\n| n       | K    | jax ms    | sklearn ms | sk/jax | inertia jax/sk | iters j/s | compile s |")
        print("|---------|------|-----------|------------|--------|----------------|-----------|-----------|")
        bench_kmeans(sizes, ks, a.dim, a.iters, a.repeats)
    if not a.skip_vmap:
        clients = 32 if a.quick else a.clients
        print("\n| encode | wall ms | compile s |")
        print("|---|---|---|")
        bench_vmap(clients, a.client_rows, a.dim, a.client_max_k, max(1, a.repeats // 2))


if __name__ == "__main__":
    main()
