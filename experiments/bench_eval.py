"""Times full-ranking evaluation against the sampled one, in the same process.

    python -m experiments.bench_eval --data_dir=/work/data           # ML-1M + 10^6 items
    python -m experiments.bench_eval --cases=ml-1m,synthetic --synthetic_users=1024

Each case scores an MF model (random embeddings, ``--dim``) with both protocols of
``fedras_jax.metrics``: sampled (the test item among its 99 negatives) and full (among
every item but the user's training items; users batched, catalogue chunked, see
``docs/design/full_ranking.md``). Each evaluation is compiled once, then timed over
``--repeats`` calls (the median is reported), and the ratio full / sampled printed.
Cases: ``ml-100k``, ``ml-1m`` (the NCF split, all 6,040 users) and ``synthetic``
(``fedras_jax.data.synthetic``: 10^6 items, Zipf popularity, ``--synthetic_users``).
"""
import resource
import sys
import time

from absl import flags
import jax
import numpy as np

from fedras_jax import data as data_lib
from fedras_jax import flags as flag_lib
from fedras_jax.data.synthetic import synthetic_split
from fedras_jax.metrics import full_ranking_blocks, make_evaluate
from fedras_jax.models import get_model
from fedras_jax.runtime import tune_host_allocator

_CASES = flags.DEFINE_list("cases", ["ml-1m", "synthetic"], "ml-100k | ml-1m | synthetic")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: library default)")
_DIM = flags.DEFINE_integer("dim", 64, "MF embedding size", lower_bound=1)
_ITEMS = flags.DEFINE_integer("synthetic_items",
                              1_000_000,
                              "catalogue of the synthetic case",
                              lower_bound=1)
_USERS = flags.DEFINE_integer("synthetic_users", 1024, "users of the synthetic case", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per evaluation (median)", lower_bound=1)


def load_case(name: str):
  if name == "synthetic":
    return synthetic_split(_USERS.value, _ITEMS.value, seed=0, name="synthetic")
  return data_lib.load_dataset(name, _DATA_DIR.value)


def timed(fn, *args):
  """``(compile + first call seconds, median seconds of --repeats calls, result)``."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times)), out


def bench(name: str) -> dict:
  split = load_case(name)
  model = get_model("mf", dim=_DIM.value, init_scale=0.1)
  params = model.init(jax.random.key(0), split.num_users, split.num_items)
  args = (params.users, params.items, params.dense)
  result = dict(case=name,
                users=split.num_users,
                items=split.num_items,
                train=int(split.train_items.shape[0]),
                blocks=full_ranking_blocks(model, split.num_users, split.num_items))
  for protocol in ("sampled", "full"):
    evaluate = make_evaluate(model,
                             split.test_item,
                             split.test_negatives,
                             protocol=protocol,
                             train_indptr=split.train_indptr,
                             train_items=split.train_items,
                             num_items=split.num_items)
    first, seconds, metrics = timed(evaluate, *args)
    key = "full_hr@10" if protocol == "full" else "hr@10"
    result[protocol] = dict(first_call_s=first, seconds=seconds, hr10=float(metrics[key]))
  result["ratio"] = result["full"]["seconds"] / result["sampled"]["seconds"]
  result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def main(argv):
  del argv
  tune_host_allocator()
  for name in _CASES.value:
    if name not in ("ml-100k", "ml-1m", "synthetic"):
      sys.exit(f"error: --cases: unknown case {name!r} (ml-100k, ml-1m, synthetic)")
  print("| case | users | items | train | block (users x items) | sampled s | full s | "
        "full / sampled | full: compile + first call s | peak RSS MiB (process, so far) |")
  print("|---|--:|--:|--:|---|--:|--:|--:|--:|--:|")
  for name in _CASES.value:
    try:
      r = bench(name)
    except (ValueError, OSError, data_lib.FetchError) as e:
      sys.exit("error: " + " ".join(str(e).splitlines()))
    print(
        f"| {r['case']} | {r['users']:,} | {r['items']:,} | {r['train']:,} | "
        f"{r['blocks'][0]} x {r['blocks'][1]:,} | {r['sampled']['seconds']:.4f} | "
        f"{r['full']['seconds']:.3f} | {r['ratio']:.1f}x | "
        f"{r['full']['first_call_s']:.2f} | {r['peak_rss_mib']:,.0f} |",
        flush=True)


if __name__ == "__main__":
  flag_lib.run_main(main)
