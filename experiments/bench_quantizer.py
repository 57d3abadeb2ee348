"""Benchmark the fedras_jax.quantize K-Means and the vmapped encoder.

Part 1: this K-Means (jitted Lloyd) vs scikit-learn
``KMeans(algorithm="lloyd", n_init=1, init=<same centroids>, max_iter=M,
tol=0)`` on the same data, same k-means++ initial centroids (drawn once with
``sklearn.cluster.kmeans_plusplus``) and the same iteration cap. Reported:
best-of-R wall time (R interleaved runs; on a shared machine the minimum is
the least noisy estimate; compile time excluded, reported separately) of this
``kmeans``, of ``KMeans.fit`` and of scikit-learn's bare Lloyd loop
(``_kmeans_single_lloyd`` on the same centred data, i.e. fit() without its
validation/copy overhead), the ratios sklearn/jax (> 1 = JAX faster), the
inertia ratio jax/sklearn and the iteration counts. ``--threads 1`` pins
both libraries to one thread (the fairer kernel comparison under load).

Part 2: ``encode`` for C client matrices ``[rows, d]`` (C=256, 32 with
``--quick``) with per-client budgets: ``jit(vmap(encode))`` with the default
batching (``lax.map`` on CPU) and with ``vmap_strategy="parallel"`` vs C
sequential calls of one jitted single-client ``encode``.

Part 3: one large matrix (``[--split_rows, d]``, rows along 50 random
directions with random magnitudes + Gaussian noise) under a budget allowing
K = 45 (max_k 48): ``encode`` with one split per split test
(``max_splits=1``) vs several and the default (every incoherent cluster at
once). Reported: best-of-R seconds per call, split tests that split, Lloyd
steps, K, bits and the relative reconstruction error ``||G - G_hat|| / ||G||``.

Usage::

    python -m experiments.bench_quantizer --quick
    python -m experiments.bench_quantizer --sizes=20000,100000 --ks=64,128 --skip_vmap --skip_splits
    python -m experiments.bench_quantizer             # full grid
"""

import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import pages
from fedras_jax import flags as flag_lib
from fedras_jax import quantize as q


def _data(n, d, k, seed):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((2 * k, d)) * 2.0
  lab = rng.integers(0, 2 * k, n)
  return (centers[lab] + rng.standard_normal((n, d))).astype(np.float32)


def _time_once(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def best_of(runs: dict, repeats: int) -> dict:
  """``{name: fastest of repeats seconds}`` of ``runs`` (``{name: callable}``), timed
  interleaved so drifts of the machine touch each alike."""
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      times[name].append(_time_once(run))
  return {name: min(v) for name, v in times.items()}


def bench_kmeans(sizes, ks, d, iters, repeats, seed=0):
  try:
    from sklearn.cluster import KMeans, kmeans_plusplus
  except ImportError:
    raise ImportError("part 1 times scikit-learn's K-Means: pip install -e '.[bench]' "
                      "(or --skip_kmeans)") from None

  try:  # scikit-learn's Lloyd loop without fit()'s validation/copy overhead
    from sklearn.cluster._kmeans import _kmeans_single_lloyd
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
  except ImportError:  # private API moved
    _kmeans_single_lloyd = None

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
        return jax.block_until_ready(r)

      t = time.perf_counter()
      res = run_jax()  # first call: trace + compile + run
      first = time.perf_counter() - t
      km = KMeans(k, init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
      km.fit(x)  # warm-up (thread pools, BLAS)
      runs = {"jax": run_jax, "sk_fit": lambda: km.fit(x)}
      if _kmeans_single_lloyd is not None:
        xm = x.mean(0)
        xc, cc = x - xm, c0 - xm  # fit() centres the data the same way
        sw = np.ones(n, np.float32)
        nt = _openmp_effective_n_threads()
        # (it updates centers_init in place: pass a fresh copy every call)
        runs["sk_core"] = lambda: _kmeans_single_lloyd(
            xc, sw, cc.copy(), max_iter=iters, tol=0.0, n_threads=nt)
      best = best_of(runs, repeats)
      t_core = best.get("sk_core", float("nan"))
      r = dict(n=n,
               k=k,
               t_jax=best["jax"],
               t_fit=best["sk_fit"],
               t_core=t_core,
               inertia_ratio=float(res.inertia) / km.inertia_,
               it_jax=int(res.iters),
               it_sk=int(km.n_iter_),
               compile=max(first - best["jax"], 0.0),
              )
      rows.append(r)
      print(
          f"| {n:>7} | {k:>4} | {r['t_jax']*1e3:9.1f} | {r['t_fit']*1e3:9.1f} | {t_core*1e3:9.1f} | "
          f"{r['t_fit']/r['t_jax']:6.2f} | {t_core/r['t_jax']:6.2f} | {r['inertia_ratio']:.6f} | "
          f"{r['it_jax']:>3}/{r['it_sk']:<3} | {r['compile']:6.2f} |",
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

  def enc(strategy):
    return lambda g, k, b: q.encode(
        g, k, budget_bits=b, max_k=max_k, tau=tau, vmap_strategy=strategy)

  single = jax.jit(enc("auto"))
  variants = {
      "jit(vmap(encode)), default strategy (CPU: lax.map)": jax.jit(jax.vmap(enc("auto"))),
      "jit(vmap(encode)), vmap_strategy='parallel'": jax.jit(jax.vmap(enc("parallel"))),
  }
  runs = {
      name: (lambda f=f: jax.block_until_ready(f(gs, keys, budgets)))
      for name, f in variants.items()
  }
  runs[f"{clients} sequential calls of jit(encode)"] = lambda: jax.block_until_ready(
      [single(gs[i], keys[i], budgets[i]) for i in range(clients)])
  compile_s = {}
  for name, run in runs.items():
    t = time.perf_counter()
    run()
    compile_s[name] = time.perf_counter() - t  # first call (includes one run)
  best = best_of(runs, repeats)
  seq_name = list(runs)[-1]
  for name in runs:
    first = compile_s[name] - best[name]  # each first call compiled once and ran once
    print(
        f"| {name} | {best[name]*1e3:9.1f} | {best[seq_name] / best[name]:5.2f} | {max(first, 0):6.2f} |"
    )
  pb = list(variants.values())[0](gs, keys, budgets)
  pp = list(variants.values())[1](gs, keys, budgets)
  assert bool(jnp.all(pb.bits <= budgets))
  assert bool(jnp.all(pb.indices == pp.indices))
  print(f"mean actions {float(pb.num_actions.mean()):.2f} (budget allows {full // 8}..{full} bits, "
        f"max_k={max_k}), mean bits/budget {float((pb.bits / budgets).mean()):.3f}")
  return best


def bench_splits(n, d, max_k, k_budget, noise, repeats, splits=(1, 4, None), ndir=50, seed=0):
  rng = np.random.default_rng(seed)
  u = rng.standard_normal((ndir, d))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  g = rng.uniform(0.5, 2.0, (n, 1)) * u[rng.integers(0, ndir, n)]
  g = (g + noise * rng.standard_normal((n, d))).astype(np.float32)
  gj, key = jnp.asarray(g), jax.random.PRNGKey(seed)
  budget = q.payload_bits(k_budget, n, d)
  calls, payloads, firsts = {}, {}, {}
  for s in splits:
    f = jax.jit(
        lambda x, b, s=s: q.encode(x, key, budget_bits=b, max_k=max_k, tau=0.95, max_splits=s))
    t = time.perf_counter()
    payloads[s] = jax.block_until_ready(f(gj, budget))
    firsts[s] = time.perf_counter() - t
    calls[s] = lambda f=f: jax.block_until_ready(f(gj, budget))
  bests = best_of(calls, repeats)
  base = None
  for s in splits:
    p, first, best = payloads[s], firsts[s], bests[s]
    err = float(np.linalg.norm(np.asarray(q.decode(p)) - g) / np.linalg.norm(g))
    base = base or (best, err)
    assert int(p.bits) <= budget
    print(
        f"| {s if s is not None else 'all (default)'} | {best:7.2f} | {base[0] / best:5.2f} | "
        f"{int(p.split_tests):>3} | {int(p.lloyd_steps):>5} | {int(p.num_actions):>3} | "
        f"{int(p.bits)} | {err:.4f} | {err / base[1]:.3f} | {max(first - best, 0):6.2f} |",
        flush=True)


_QUICK = flags.DEFINE_boolean(
    "quick", False, "small sizes only (n<=20000, K<=64, 32 clients), "
    "each where its flag is not given")
_SIZES = flags.DEFINE_list("sizes", [], "K-Means row counts n (default 1000,20000,200000)")
_KS = flags.DEFINE_list("ks", [], "K-Means cluster counts (default 16,64,256)")
_DIM = flags.DEFINE_integer("dim", 64, "row width d", lower_bound=1)
_ITERS = flags.DEFINE_integer("iters", 20, "Lloyd iteration cap for both", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "interleaved timed runs (best kept)", lower_bound=1)
_CLIENTS = flags.DEFINE_integer("clients", 256, "clients of the batched encode", lower_bound=1)
_CLIENT_ROWS = flags.DEFINE_integer("client_rows", 512, "rows per client", lower_bound=1)
_CLIENT_MAX_K = flags.DEFINE_integer("client_max_k", 16, "action slots per client", lower_bound=1)
_THREADS = flags.DEFINE_integer(
    "threads",
    None, "limit scikit-learn/OpenMP to this many threads; 1 also runs XLA:CPU on one "
    "thread (its Eigen pool off; set before JAX initialises its backend)",
    lower_bound=1)
_SKIP_KMEANS = flags.DEFINE_boolean("skip_kmeans", False, "skip part 1")
_SKIP_VMAP = flags.DEFINE_boolean("skip_vmap", False, "skip part 2")
_SKIP_SPLITS = flags.DEFINE_boolean("skip_splits", False, "skip part 3")
_SPLIT_ROWS = flags.DEFINE_integer("split_rows", 10_000, "rows of part 3's matrix", lower_bound=1)
_SPLIT_NOISE = flags.DEFINE_float("split_noise", 0.2, "noise of part 3's rows", lower_bound=0.0)


def _counts(flag: str, values) -> list:
  return flag_lib.parse_values(f"--{flag}", ",".join(values), flag_lib.positive_int,
                               "a positive integer") if values else []


def main(argv):
  del argv
  threads = _THREADS.value
  if threads is not None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads == 1:
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                 + " --xla_cpu_multi_thread_eigen=false")
    try:
      from threadpoolctl import threadpool_limits
      threadpool_limits(threads)
    except ImportError:
      pass
  quick, dim, repeats = _QUICK.value, _DIM.value, _REPEATS.value
  sizes = _counts("sizes", _SIZES.value) or ([1000, 20000] if quick else [1000, 20000, 200000])
  ks = _counts("ks", _KS.value) or ([16, 64] if quick else [16, 64, 256])
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {pages.cpus_text()} "
        f"(threads: {threads or 'all'}); "
        f"d={dim}, iteration cap {_ITERS.value}, best of {repeats} interleaved runs")
  if not _SKIP_KMEANS.value:
    print("\n| n | K | jax ms | sklearn fit ms | sklearn core ms | fit/jax | core/jax "
          "| inertia jax/sk | iters jax/sk | jax compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    bench_kmeans(sizes, ks, dim, _ITERS.value, repeats)
  if not _SKIP_VMAP.value:
    clients = 32 if quick and not _CLIENTS.present else _CLIENTS.value
    print(f"\n| encode {clients} clients x [{_CLIENT_ROWS.value}, {dim}], "
          f"max_k={_CLIENT_MAX_K.value} | wall ms | speed-up vs sequential | compile s |")
    print("|---|---|---|---|")
    bench_vmap(clients, _CLIENT_ROWS.value, dim, _CLIENT_MAX_K.value, repeats)
  if not _SKIP_SPLITS.value:
    rows = _SPLIT_ROWS.value
    print(f"\n| encode [{rows}, {dim}], K cap 45, max_k 48, noise {_SPLIT_NOISE.value}: "
          "max_splits | s/call | speed-up | split rounds | Lloyd steps | K | bits | rel. error "
          "| error / S=1 | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    bench_splits(rows, dim, 48, 45, _SPLIT_NOISE.value, repeats)


if __name__ == "__main__":
  flag_lib.run_main(main)
