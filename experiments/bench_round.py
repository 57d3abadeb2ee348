"""Benchmarks the jitted packed round against a per-client loop of ``client_update``.

Same data and setting for both (ML-100K, FedMF d=64, 2 local epochs, batch 64,
4 negatives per positive, uncompressed, inverse-frequency aggregation):

* packed: ``jax.jit(make_round(...))``, one XLA program per round (all sampled
  clients trained in ``--num_lanes`` lanes);
* loop: the way PyTorch FedRec codebases simulate a round (and the reference of
  ``tests/test_round.py``): for each sampled client, a jitted ``client_plan`` and a
  jitted ``client_update`` call (same per-round keys, so the same examples, negatives
  and shuffles), then a jitted scatter-add of its update into the server sums; one
  jitted call at the end applies the inverse-frequency mean.

Compile time is measured separately (AOT ``lower().compile()``), the first round of
each method is a warm-up, and every timed round ends with ``jax.block_until_ready``.
Also printed: the padding overhead of the lane packing (wasted lane-steps and
minibatch positions) against padding every client to the round's longest, and
the wall time of the packed round's main pieces, each jitted on its own.

    python -m experiments.bench_round --data_dir=/work/shared/data
    python -m experiments.bench_round --data_dir=/work/shared/data --lane_sweep=8,16,32
    python -m experiments.bench_round --data_dir=/work/shared/data --rounds=100 \
        --loop_rounds=100 --lane_sweep=4,16 --markdown=docs/benchmarks/round_loop_ml100k.md

With ``--methods`` it compares the rounds of compression methods instead: the round
``experiments/train.py`` runs (``experiment.build_simulation``, 1/32 both ways unless a
method is written ``name:uplink``, which keeps the downlink dense), all on the same
data and seed in one process. Each method trains ``--warmup_rounds`` rounds first
(a quantizer's cost depends on the state: it grows as training goes), then
``--rounds`` timed rounds; after every timed full round its four stages
(``federated.RoundStages``: local training, uplink encode+decode, aggregation with the
server optimizer, downlink encode+decode with the new states and metrics) are timed
again one by one, each its own jitted program, on the same state. Ratios are against
the first method (put ``uncompressed`` first)::

    python -m experiments.bench_round --data_dir=/work/shared/data \
        --methods=uncompressed,fedras,fedras:uplink,fedras_fixed_k,topk,svd,colr,embedding_kmeans
    python -m experiments.bench_round --data_dir=/work/shared/data --dataset=ml-1m \
        --methods=uncompressed,fedras --rounds=10
"""
import functools
import os
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import pages
from fedras_jax import data as data_lib
from fedras_jax import flags as flag_lib
from fedras_jax import outputs
from fedras_jax.compress import identity
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_simulation, round_hparams
from fedras_jax.federated import (RoundConfig, RoundParts, aggregate_item_updates,
                                  client_data_from_split, client_keys, client_plan, client_update,
                                  init_states, make_round, plan_capacity, plan_clients,
                                  round_clients, train_clients)
from fedras_jax.federated.local_data import client_sizes
from fedras_jax.federated.local_training import lane_batches, lane_schedule
from fedras_jax.models import get_model
from fedras_jax.runtime import tune_host_allocator

_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: library default)")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "timed rounds of the packed round", lower_bound=1)
_CLIENTS = flags.DEFINE_integer("clients_per_round", 64, "clients sampled per round", lower_bound=1)
_LANES = flags.DEFINE_integer("num_lanes",
                              TrainConfig().num_lanes,
                              "lanes of the packed round (default: train's)",
                              lower_bound=1)
_LOOP_ROUNDS = flags.DEFINE_integer("loop_rounds",
                                    3,
                                    "timed rounds of the per-client loop",
                                    lower_bound=1)
_SWEEP = flags.DEFINE_string("lane_sweep", "",
                             "comma list of lane counts to also time, e.g. 8,16,32")
_PIECES = flags.DEFINE_bool("pieces", True, "time the packed round's main pieces")
_SEED = flags.DEFINE_integer("seed",
                             0,
                             "seed of sampling, negatives and initialisation",
                             lower_bound=0)
_METHODS = flags.DEFINE_list(
    "methods", [], "compare these methods' rounds, with a stage breakdown (name or "
    "name:uplink for a dense downlink); empty: the packed round against a per-client loop")
_DATASET = flags.DEFINE_string("dataset", "ml-100k", "dataset of --methods")
_METHOD_CLIENTS = flags.DEFINE_integer("method_clients",
                                       0,
                                       "clients per round of --methods (0: 64, or 256 on ml-1m)",
                                       lower_bound=0)
_WARMUP = flags.DEFINE_integer("warmup_rounds",
                               20,
                               "rounds trained before timing (--methods)",
                               lower_bound=0)
_RATIO = flags.DEFINE_float("payload_ratio", 1 / 32, "payload ratio of --methods")
_OUT = flags.DEFINE_string("out", None, "also write the --methods results as JSON here")
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "also write the tables (--methods: the methods') as a markdown page here "
    "(with the command, commit and machine that produced it)")

# The training defaults (`TrainConfig()`: ML-100K FedMF), timed uncompressed (the downlink
# budget of the hyper-parameters is unread).
DEFAULTS = TrainConfig()
DATASET, DIM, EPOCHS, BATCH, NEG = (DEFAULTS.dataset, DEFAULTS.dim, DEFAULTS.local_epochs,
                                    DEFAULTS.batch_size, DEFAULTS.neg_ratio)
HP = round_hparams(DEFAULTS, dense_round_bits=0)


def _now():
  return time.perf_counter()


class Setting:
  """The dataset, model and host-side client sizes shared by every method."""

  def __init__(self, split, clients_per_round, seed):
    self.split = split
    self.data = client_data_from_split(split)
    self.model = get_model(DEFAULTS.model, dim=DIM, init_scale=DEFAULTS.init_scale)
    self.m = clients_per_round
    self.seed = seed
    self.num_users, self.num_items = split.num_users, split.num_items
    self.num_pos = np.asarray(split.num_train_per_user, np.int64)
    self.num_seen = np.diff(split.seen_indptr)
    _, self.steps = client_sizes(self.num_pos,
                                 self.num_seen,
                                 self.num_items,
                                 neg_ratio=NEG,
                                 epochs=EPOCHS,
                                 batch_size=BATCH)

  def config(self, num_lanes, rounds):
    cap = plan_capacity(self.num_pos,
                        self.num_seen,
                        self.num_items,
                        seed=self.seed,
                        rounds=rounds,
                        clients_per_round=self.m,
                        local_epochs=EPOCHS,
                        batch_size=BATCH,
                        neg_ratio=NEG,
                        num_lanes=num_lanes)
    return RoundConfig(clients_per_round=self.m,
                       local_epochs=EPOCHS,
                       batch_size=BATCH,
                       neg_ratio=NEG,
                       num_lanes=num_lanes,
                       aggregation="inverse_frequency",
                       **cap._asdict())

  def init(self):
    return init_states(self.model, self.num_users, self.num_items, optax.sgd(1.0), seed=self.seed)

  def sampled(self, rounds):
    """``[rounds, M]`` host array: the users of rounds ``0..rounds-1``."""
    base = jax.random.key(self.seed)
    fn = jax.jit(jax.vmap(lambda r: round_clients(base, r, self.num_users, self.m)))
    return np.asarray(fn(jnp.arange(rounds)))


# ---------------------------------------------------------------------------------------
# The packed round.


class PackedRunner:
  """The jitted packed round on its own state: AOT-compiled, then round 0 as warm-up."""

  def __init__(self, s: Setting, cfg: RoundConfig):
    self.server, self.clients = s.init()
    round_fn = jax.jit(make_round(s.model, s.data, cfg, optax.sgd(1.0)), donate_argnums=(0, 1))
    t = _now()
    self.compiled = round_fn.lower(self.server, self.clients, HP).compile()
    self.compile_s = _now() - t
    self.step()  # warm-up: round 0
    self.after0 = (np.asarray(self.server.items), np.asarray(self.clients.users))
    self.times = []

  def step(self):
    t = _now()
    self.server, self.clients, self.metrics = jax.block_until_ready(
        self.compiled(self.server, self.clients, HP))
    return _now() - t

  def timed(self):
    self.times.append(self.step())


def make_pieces(s: Setting, cfg: RoundConfig):
  """The packed round's stages, each its own jitted program (as in ``make_round``)."""
  m = cfg.clients_per_round

  parts = RoundParts(model=s.model,
                     data=s.data,
                     config=cfg,
                     server_opt=optax.sgd(1.0),
                     uplink=identity(s.num_items),
                     downlink=identity(s.num_items))

  @jax.jit
  def prep(server):
    return plan_clients(parts, server)

  @jax.jit
  def schedule(prepared):
    _, plans, layout, items_of_slot = prepared
    return lane_batches(plans,
                        layout,
                        items_of_slot,
                        num_lanes=cfg.num_lanes,
                        max_iters=cfg.max_lane_steps,
                        batch_size=BATCH)

  @jax.jit
  def train(server, clients, hp, prepared):
    return train_clients(parts, server, clients.users[prepared.sampled], hp.local, prepared)

  @jax.jit
  def aggregate(prepared, trained):
    _, _, layout, items_of_slot = prepared
    return aggregate_item_updates(trained.deltas,
                                  items_of_slot,
                                  layout.valid,
                                  num_items=s.num_items,
                                  num_clients=m,
                                  rule=cfg.aggregation)

  return prep, schedule, train, aggregate


def bench_pieces(s: Setting, cfg: RoundConfig, rounds: int, runner: "PackedRunner"):
  """Per-round seconds of each stage and of the full round, interleaved, rounds 1..rounds.

  The stages run on a fixed initial model, the full round (``runner``) on its own
  state set back to round ``r``: the work of a round depends only on (seed, round).
  """
  prep, schedule, train, aggregate = make_pieces(s, cfg)
  server, clients = s.init()
  at = lambda r: server._replace(round=jnp.int32(r))
  prepared = jax.block_until_ready(prep(at(0)))  # compile
  jax.block_until_ready(schedule(prepared))
  jax.block_until_ready(aggregate(prepared, train(at(0), clients, HP, prepared)))
  times = {"full": [], "prep": [], "schedule": [], "train": [], "aggregate": []}
  for r in range(1, rounds + 1):
    runner.server = runner.server._replace(round=jnp.int32(r))
    times["full"].append(runner.step())
    t = _now()
    prepared = jax.block_until_ready(prep(at(r)))
    times["prep"].append(_now() - t)
    t = _now()
    jax.block_until_ready(schedule(prepared))
    times["schedule"].append(_now() - t)
    t = _now()
    trained = jax.block_until_ready(train(at(r), clients, HP, prepared))
    times["train"].append(_now() - t)
    t = _now()
    jax.block_until_ready(aggregate(prepared, trained))
    times["aggregate"].append(_now() - t)
  times = {k: np.asarray(v) for k, v in times.items()}
  times["while_loop"] = times["train"] - times["schedule"]
  times["rest"] = times["full"] - times["prep"] - times["train"]
  return times


# ---------------------------------------------------------------------------------------
# The per-client loop.


def make_loop(s: Setting, cfg: RoundConfig):
  """Jitted pieces of the per-client loop and a ``run_round(server_items, dense, users, r)``."""
  m, num_items, local = cfg.clients_per_round, s.num_items, HP.local
  base = jax.random.key(s.seed)

  @jax.jit
  def sample(r):
    sampled = round_clients(base, r, s.num_users, m)
    return sampled, jax.random.key_data(client_keys(base, r, sampled))

  @jax.jit
  def plan_fn(user, key_data):
    return client_plan(s.data,
                       user,
                       jax.random.wrap_key_data(key_data),
                       neg_ratio=NEG,
                       epochs=EPOCHS,
                       batch_size=BATCH)

  @jax.jit
  def update_fn(plan, items, dense, users):
    return client_update(s.model,
                         local,
                         s.data,
                         plan,
                         items,
                         dense,
                         users[plan.user],
                         max_slots=cfg.max_client_slots,
                         batch_size=BATCH)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def accumulate(acc, user, out):
    sums, counts, dense_sum, users = acc
    ids = jnp.where(out.mask, out.items, num_items)  # padding slots are dropped
    sums = sums.at[ids].add(out.deltas, mode="drop")
    counts = counts.at[ids].add(1, mode="drop")
    dense_sum = jax.tree.map(jnp.add, dense_sum, out.dense_delta)
    return sums, counts, dense_sum, users.at[user].set(out.user)

  @jax.jit
  def start(items, dense, users):
    return (jnp.zeros_like(items), jnp.zeros(num_items,
                                             jnp.int32), jax.tree.map(jnp.zeros_like, dense), users)

  @jax.jit
  def finish(items, dense, acc):
    sums, counts, dense_sum, users = acc
    new_items = items + sums / jnp.maximum(counts, 1)[:, None].astype(items.dtype)
    return new_items, jax.tree.map(lambda p, d: p + d / m, dense, dense_sum), users

  def run_round(items, dense, users, r):
    sampled, keys = jax.device_get(sample(r))
    acc = start(items, dense, users)
    for user, key in zip(sampled, keys):
      out = update_fn(plan_fn(user, key), items, dense, users)
      acc = accumulate(acc, user, out)
    return finish(items, dense, acc)

  def compile_all(items, dense, users):
    """AOT-compiles every piece; returns seconds."""
    t = _now()
    sampled, keys = sample.lower(0).compile()(0)
    user, key = np.asarray(sampled)[0], np.asarray(keys)[0]
    plan = plan_fn.lower(user, key).compile()(user, key)
    out = jax.eval_shape(update_fn, plan, items, dense, users)
    update_fn.lower(plan, items, dense, users).compile()
    acc = jax.eval_shape(start, items, dense, users)
    start.lower(items, dense, users).compile()
    accumulate.lower(acc, user, out).compile()
    finish.lower(items, dense, acc).compile()
    return _now() - t

  return run_round, compile_all


class LoopRunner:
  """The per-client loop on its own state: AOT-compiled, then round 0 as warm-up."""

  def __init__(self, s: Setting, cfg: RoundConfig):
    self.run_round, compile_all = make_loop(s, cfg)
    server, clients = s.init()
    self.state = (server.items, server.dense, clients.users)
    self.compile_s = compile_all(*self.state)
    self.round = 0
    self.step()  # warm-up: round 0
    self.after0 = (np.asarray(self.state[0]), np.asarray(self.state[2]))
    self.times = []

  def step(self):
    t = _now()
    self.state = jax.block_until_ready(self.run_round(*self.state, self.round))
    self.round += 1
    return _now() - t

  def timed(self):
    self.times.append(self.step())


# ---------------------------------------------------------------------------------------
# Padding.


def padding_stats(s: Setting, sampled: np.ndarray, lanes, max_lane_steps):
  """The table lines of the wasted work in rounds ``sampled [R, M]``, summed over the rounds.

  A lane-step is one SGD step of one lane (B minibatch positions). Useful work:
  every client's own steps, and ``epochs * examples`` of its minibatch positions.
  """
  steps = s.steps[sampled]  # [R, M]
  useful_steps = steps.sum()
  useful_pos = EPOCHS * (1 + NEG) * s.num_pos[sampled].sum()
  rows = [("per-client loop (own steps only)", useful_steps, "-")]
  for w in lanes:
    fn = jax.jit(jax.vmap(lambda st: jnp.max(lane_schedule(st, w)[1][:, -1])))
    iters = np.asarray(fn(jnp.asarray(steps, jnp.int32)))  # [R] loop iterations
    bound = np.maximum(steps.max(axis=1), -(-steps.sum(axis=1) // w))
    rows.append((f"packed W={w} (while_loop)", w * iters.sum(),
                 f"{iters.mean():.1f} (bound {bound.mean():.1f})"))
    rows.append((f"packed W={w} precomputed T={max_lane_steps[w]}",
                 w * max_lane_steps[w] * len(steps), f"{max_lane_steps[w]}"))
  rows.append(("pad every client to round max", (steps.shape[1] * steps.max(axis=1)).sum(),
               f"{steps.max(axis=1).mean():.1f}"))
  lines = [
      f"Padding over {len(steps)} rounds x {steps.shape[1]} clients: client SGD steps "
      f"min/median/max {steps.min()}/{int(np.median(steps))}/{steps.max()}, "
      f"{useful_steps / len(steps):.0f} per round; slots of a minibatch that hold an example: "
      f"{useful_pos / (BATCH * useful_steps):.1%} even without padding", "",
      f"| {'schedule':<36} | {'lane-steps/round':>16} | {'wasted lane-steps':>17} | "
      f"{'wasted positions':>16} | {'iters/round':>22} |",
      f"|{'-' * 38}|{'-' * 18}|{'-' * 19}|{'-' * 18}|{'-' * 24}|"
  ]
  for name, lane_steps, iters in rows:
    lines.append(f"| {name:<36} | {lane_steps / len(steps):16.0f} | "
                 f"{1 - useful_steps / lane_steps:17.1%} | "
                 f"{1 - useful_pos / (BATCH * lane_steps):16.1%} | {iters:>22} |")
  return lines


# ---------------------------------------------------------------------------------------


def _row(name, times, m, loop_times, compile_s) -> str:
  """A table row of round ``times``; the speed-ups over the loop only where ``loop_times``
  (None: ``-``) timed the same rounds."""
  mean = statistics.fmean(times)
  if loop_times is None:
    ratios = f"{'-':>10} | {'-':>9}"
  else:
    assert len(loop_times) == len(times), "a speed-up over other rounds is no like-for-like"
    ratios = (f"{statistics.fmean(loop_times) / mean:9.2f}x | "
              f"{min(loop_times) / min(times):8.2f}x")
  return (f"| {name:<30} | {m / mean:9.0f} | {1e3 * min(times):7.1f} | "
          f"{1e3 * statistics.median(times):9.1f} | {1e3 * mean:7.1f} | {ratios} | "
          f"{compile_s:9.2f} |")


# ---------------------------------------------------------------------------------------
# Methods compared, stage by stage.

_STAGES = ("local", "uplink", "aggregate", "downlink")


def _timed(fn, *args):
  t = _now()
  out = jax.block_until_ready(fn(*args))
  return out, _now() - t


def method_config(spec: str, clients: int, rounds: int) -> TrainConfig:
  """The validated config of a ``--methods`` entry (``method`` or ``method:uplink``)."""
  name, _, mode = spec.partition(":")
  if mode not in ("", "uplink"):
    raise app.UsageError(f"--methods: {spec!r}: write a method or method:uplink")
  return TrainConfig(dataset=_DATASET.value,
                     method=name,
                     clients_per_round=clients,
                     rounds=rounds,
                     payload_ratio=_RATIO.value,
                     downlink_compression=mode != "uplink",
                     seed=_SEED.value,
                     quiet=True).validate()


class MethodRunner:
  """One method's round (as ``train`` builds it), warmed up, and its stages jitted alone."""

  def __init__(self, spec: str, split, clients: int, rounds: int):
    self.name = spec
    config = method_config(spec, clients, rounds)
    sim = build_simulation(config, split)
    self.hp, self.server, self.clients = sim.hp, sim.server, sim.clients
    self.round = jax.jit(sim.round_fn)
    st = sim.round_fn.stages
    self.stages = [jax.jit(f) for f in (st.local, st.uplink, st.aggregate, st.downlink)]
    t = _now()
    self.round = self.round.lower(self.server, self.clients, self.hp).compile()
    self.compile_s = _now() - t
    self.times = {k: [] for k in ("full",) + _STAGES}
    self.actions = []

  def warm(self, rounds: int):
    for _ in range(rounds):
      self.server, self.clients, _ = self.round(self.server, self.clients, self.hp)
    jax.block_until_ready(self.server)

  def timed(self):
    s, c, hp = self.server, self.clients, self.hp
    (self.server, self.clients, metrics), t = _timed(self.round, s, c, hp)
    self.times["full"].append(t)
    self.actions.append(float(np.mean(metrics.num_actions)))
    local, t = _timed(self.stages[0], s, c, hp)
    self.times["local"].append(t)
    up, t = _timed(self.stages[1], s, hp, local)
    self.times["uplink"].append(t)
    agg, t = _timed(self.stages[2], s, local, up)
    self.times["aggregate"].append(t)
    _, t = _timed(self.stages[3], s, c, hp, local, up, agg)
    self.times["downlink"].append(t)


def _report(title: str, setting: str, lines):
  """Prints ``lines``; with ``--markdown``, also writes them as that page, headed by
  ``title``, how it was made and ``setting`` (generated: edit the benchmark)."""
  print("\n" + "\n".join(lines))
  if _MARKDOWN.value:
    pages.write_page(_MARKDOWN.value, title, "experiments.bench_round", [f"setting: {setting}"],
                     lines)


def compare_methods():
  """``--methods``: ms per round and per stage of each method, ratios to the first."""
  dataset = _DATASET.value
  clients = _METHOD_CLIENTS.value or (256 if dataset.startswith("ml-1m") else 64)
  rounds = _WARMUP.value + _ROUNDS.value + 1
  for spec in _METHODS.value:  # every entry is checked before any data is read
    method_config(spec, clients, rounds)
  split = data_lib.load_dataset(dataset, _DATA_DIR.value, seed=_SEED.value)
  print(f"{dataset}: {split.num_users} users, {split.num_items} items; FedMF d=64, "
        f"{clients} clients/round, payload {_RATIO.value:g}, seed {_SEED.value}; "
        f"{_WARMUP.value} warm-up rounds, {_ROUNDS.value} timed")
  runners = []
  for spec in _METHODS.value:
    # The first call of every stage program compiles it: one untimed round first.
    r = MethodRunner(spec, split, clients, rounds)
    r.warm(_WARMUP.value)
    r.timed()
    r.times = {k: [] for k in r.times}
    r.actions = []
    runners.append(r)
    print(f"  {spec}: compiled in {r.compile_s:.1f} s, warmed up", flush=True)
  for _ in range(_ROUNDS.value):  # round-robin: machine noise hits every method alike
    for r in runners:
      r.timed()
  base = statistics.median(runners[0].times["full"])
  cols = ("full",) + _STAGES
  lines = [
      f"ms per round, median of {_ROUNDS.value} timed rounds after {_WARMUP.value} "
      f"warm-up rounds (stages: each jitted alone on the same state); x: full round / "
      f"{runners[0].name}'s; actions: mean K of the uplink (-1: not an action method)", "",
      "| method | round ms | x | " + " | ".join(f"{c} ms" for c in _STAGES)
      + " | actions | compile s |", "|---|---|---|" + "---|" * len(_STAGES) + "---|---|"
  ]
  results = []
  for r in runners:
    med = {k: 1e3 * statistics.median(r.times[k]) for k in cols}
    ratio = med["full"] / (1e3 * base)
    acts = statistics.fmean(r.actions) if r.actions else float("nan")
    lines.append(f"| {r.name} | {med['full']:.1f} | {ratio:.2f} | "
                 + " | ".join(f"{med[k]:.1f}" for k in _STAGES)
                 + f" | {acts:.1f} | {r.compile_s:.1f} |")
    results.append(
        dict(method=r.name, ms=med, ratio=ratio, actions_mean=acts, compile_s=r.compile_s))
  _report(
      f"Round cost by method: {dataset}, {clients} clients per round",
      f"FedMF d=64, E=2, B=64, 4 negatives, item_lr 8, payload {_RATIO.value:g} both ways "
      f"(`:uplink`: dense downlink), seed {_SEED.value}", lines)
  if _OUT.value:
    outputs.write_json(
        _OUT.value,
        dict(dataset=dataset,
             clients=clients,
             payload_ratio=_RATIO.value,
             warmup_rounds=_WARMUP.value,
             rounds=_ROUNDS.value,
             seed=_SEED.value,
             jax=jax.__version__,
             cpus=os.cpu_count(),
             results=results))


def main(argv):
  del argv
  if _MARKDOWN.value:
    outputs.check_writable_file(_MARKDOWN.value, "--markdown")
  tuned = tune_host_allocator()
  wall = _now()
  if _METHODS.value:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {pages.cpus_text()}, "
          f"malloc tuned: {tuned}")
    compare_methods()
    print(f"\ntotal wall time {_now() - wall:.1f} s")
    return
  sweep = (flag_lib.parse_values("--lane_sweep", _SWEEP.value, flag_lib.positive_int,
                                 "a positive integer") if _SWEEP.value else [])
  split = data_lib.load_dataset(DATASET, _DATA_DIR.value, seed=_SEED.value)
  s = Setting(split, _CLIENTS.value, _SEED.value)
  rounds, loop_rounds = _ROUNDS.value, min(_LOOP_ROUNDS.value, _ROUNDS.value)
  total = rounds + 1  # round 0 is the warm-up
  main_w = _LANES.value
  lanes = [main_w] + sweep
  lanes = list(dict.fromkeys(lanes))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {pages.cpus_text()}, "
        f"malloc tuned: {tuned}")
  print(f"{DATASET}: {s.num_users} users, {s.num_items} items; FedMF d={DIM}, {EPOCHS} local "
        f"epochs, batch {BATCH}, {NEG} negatives, {s.m} clients/round, uncompressed")

  cfgs = {w: s.config(w, total) for w in lanes}
  cfg = cfgs[main_w]
  print(f"capacity (W={main_w}): slot_capacity {cfg.slot_capacity}, max_client_slots "
        f"{cfg.max_client_slots}, max_lane_steps {cfg.max_lane_steps}")
  packed = {w: PackedRunner(s, cfgs[w]) for w in lanes}
  loop = LoopRunner(s, cfg)
  diff = [float(np.max(np.abs(a - b))) for a, b in zip(loop.after0, packed[main_w].after0)]
  print(f"round 0 (warm-up), loop vs packed: max |diff| items {diff[0]:.1e}, users {diff[1]:.1e}")

  # Round-robin over the methods, so machine noise hits them alike: round r of every
  # packed program, then (for r <= loop_rounds) round r of the loop.
  for r in range(1, rounds + 1):
    for w in lanes:
      packed[w].timed()
    if r <= loop_rounds:
      loop.timed()

  steps = s.steps[s.sampled(total)].sum(axis=1)
  lines = [
      f"Timed rounds 1..{rounds} (packed) and 1..{loop_rounds} (loop), interleaved; client "
      f"SGD steps per round: {steps[1:].mean():.0f} mean over 1..{rounds}, "
      f"{steps[1:loop_rounds + 1].mean():.0f} over 1..{loop_rounds}", "",
      f"| {'method':<30} | {'updates/s':>9} | {'ms min':>7} | {'ms median':>9} | "
      f"{'ms mean':>7} | {'loop/mean':>10} | {'loop/min':>9} | {'compile s':>9} |",
      f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 12}|{'-' * 11}|"
      f"{'-' * 11}|"
  ]
  if loop_rounds < rounds:
    lines += [
        _row(f"packed round W={w}", packed[w].times, s.m, None, packed[w].compile_s) for w in lanes
    ]
  lines += [
      _row(f"packed W={w}, rounds 1..{loop_rounds}", packed[w].times[:loop_rounds], s.m, loop.times,
           packed[w].compile_s) for w in lanes
  ]
  lines += [
      _row(f"per-client loop, rounds 1..{loop_rounds}", loop.times, s.m, loop.times,
           loop.compile_s), "",
      "updates/s: clients per round / mean round time; loop/mean, loop/min: speed-up over the "
      "per-client loop on the same rounds (ratio of mean, of min round times; `-`: rounds the "
      "loop did not time); compile: AOT lower+compile (loop: all its jitted functions)", ""
  ]
  sampled = s.sampled(total)[1:]
  lines += padding_stats(s, sampled, lanes, {w: c.max_lane_steps for w, c in cfgs.items()})
  slots = (s.num_pos[sampled]
           + np.minimum(NEG * s.num_pos[sampled], s.num_items - s.num_seen[sampled])).sum(axis=1)
  lines += [
      "", f"slot buffer: {slots.mean():.0f} of {cfg.slot_capacity} slots used per round "
      f"({1 - slots.mean() / cfg.slot_capacity:.1%} padding); the loop pads each client to "
      f"max_client_slots={cfg.max_client_slots} (mean use "
      f"{slots.mean() / s.m / cfg.max_client_slots:.1%})"
  ]
  _report(
      f"Packed round against a per-client loop: {DATASET}, {s.m} clients per round",
      f"FedMF d={DIM}, E={EPOCHS}, B={BATCH}, {NEG} negatives, uncompressed, {main_w} lanes, "
      f"seed {s.seed}", lines)

  if _PIECES.value:
    p = bench_pieces(s, cfg, rounds, packed[main_w])
    print(f"\nPacked round W={main_w}: its stages, each jitted alone, timed right after the full "
          f"round on each of rounds 1..{rounds}; ms min / median")
    for key, name in (("full",
                       "full round (make_round)"), ("prep",
                                                    "sample + plans + slot layout + slot items"),
                      ("train", "local training (packed_client_updates)"),
                      ("schedule", "  of which lane_batches precompute"),
                      ("while_loop", "  of which the while_loop (train - precompute)"),
                      ("rest", "aggregation+metrics+apply (full-prep-train)"),
                      ("aggregate", "  of which aggregate_item_updates alone")):
      low = "     -" if key in ("while_loop", "rest") else f"{1e3 * np.min(p[key]):6.1f}"
      print(f"  {name:<46}: {low} / {1e3 * np.median(p[key]):6.1f}")
    print("  (differences: median over rounds of the per-round difference)")
  print(f"\ntotal wall time {_now() - wall:.1f} s")


if __name__ == "__main__":
  flag_lib.run_main(main)
