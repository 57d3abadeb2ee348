"""Cost of a federated round as the work grows: clients per round and catalogue size.

Synthetic data (``fedras_jax.data.synthetic``): Zipf item popularity (exponent
``--zipf``, item 0 the most popular), ragged users (lognormal sizes, median
``--median_interactions``, clipped to ``[--min_interactions, --max_interactions]``
and to the catalogue), ``max(2 * clients, --min_users)`` users, leave-one-out.
The round is the one ``experiments/train.py`` runs (``experiment.build_round_config``,
``build_simulation``): FedMF
d=``--dim``, 2 local epochs, batch 64, 4 negatives per positive, inverse-frequency
aggregation, ``--method`` (``fedras`` at payload 1/32, or ``uncompressed``, ...).

Two curves:

* clients per round ``--clients`` (64 -> 4096) at ``--fixed_items`` items;
* catalogue ``--items`` (10^3 -> 10^6) at ``--fixed_clients`` clients per round.

Each configuration runs in a fresh subprocess (``--single``), so its peak memory is
its own. Per configuration: data generation seconds, AOT compile seconds, the first
(warm-up) round, then the median of ``--rounds`` timed rounds (each ended by
``block_until_ready``), client updates per second, and memory:

* ``state``: bytes of the round's inputs (item table, user table, ...);
* ``xla temp``: XLA's planned scratch of the compiled round (``memory_analysis``);
* ``peak rss``: the process's peak resident memory while running rounds, and its
  growth over the resident memory before the rounds (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after data and state are built, and again after
  compiling, so data generation and compilation are not counted; where the reset
  is not possible, ``ru_maxrss`` and the growth over the memory before compiling);
* the device's ``peak_bytes_in_use`` where the backend reports one (not on CPU).

The growth exponent of a curve is the least-squares slope of ``log(y)`` on
``log(x)`` (time ~ x^b). The largest arrays of the optimised HLO are listed, and
an array with both a clients and a catalogue dimension is flagged: the round must
work on the rows the sampled clients touch (gather / segment_sum), never on a
dense ``[clients, items, d]`` tensor.

    python -m experiments.bench_scale                    # both curves, fedras
    python -m experiments.bench_scale --method=uncompressed
    python -m experiments.bench_scale --curves=items --baseline_method=uncompressed
    python -m experiments.bench_scale --quick            # small maxima, 2 rounds
    python -m experiments.bench_scale --single --num_clients=64 --num_items=1000000
    python -m experiments.bench_scale --markdown=docs/benchmarks/scale_fedras.md
"""
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import flags
import numpy as np

from fedras_jax import flags as flag_lib
from fedras_jax import outputs

_METHOD = flags.DEFINE_string("method", "fedras", "compressor (config.METHODS): fedras, "
                              "uncompressed, ...")
_BASELINE = flags.DEFINE_string(
    "baseline_method", "", "also run this method (e.g. uncompressed) at every configuration, "
    "just before --method's run, and print --method's s/round over it")
_CLIENTS = flags.DEFINE_string("clients", "64,256,1024,4096",
                               "clients-per-round curve (at --fixed_items)")
_ITEMS = flags.DEFINE_string("items", "1000,10000,100000,1000000",
                             "catalogue curve (at --fixed_clients)")
_FIXED_ITEMS = flags.DEFINE_integer("fixed_items", 10000, "catalogue of the clients curve")
_FIXED_CLIENTS = flags.DEFINE_integer("fixed_clients", 64, "clients per round of the "
                                      "catalogue curve")
_CURVES = flags.DEFINE_string("curves", "clients,items", "which curves to run")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed rounds per configuration (after 1 warm-up)")
_ROUND_BUDGET = flags.DEFINE_float(
    "round_budget_s", 120.0, "stop timing a configuration's rounds once they took this long "
    "(at least 1 timed round, none when the warm-up alone took longer: it is then the measure)")
_DOWNLINK = flags.DEFINE_bool(
    "downlink_compression", True, "compress the server's update "
    "too (as training; --nodownlink_compression: dense downlink)")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "compile each configuration, run no "
    "round (memory plan and compile cost only)")
_QUICK = flags.DEFINE_bool(
    "quick", False, "small maxima: clients 16..128 at 2000 items, "
    "items 10^3..10^5 at 16 clients, 2 timed rounds (each where its flag is not given)")
_DIM = flags.DEFINE_integer("dim", 64, "embedding size")
_LANES = flags.DEFINE_integer("num_lanes", 8, "lanes of packed local training")
_ZIPF = flags.DEFINE_float("zipf", 1.1, "Zipf exponent of item popularity")
_MEDIAN = flags.DEFINE_float("median_interactions", 64.0, "median interactions per user")
_SIGMA = flags.DEFINE_float("sigma", 1.0, "lognormal sigma of interactions per user")
_MIN_INTER = flags.DEFINE_integer("min_interactions", 20, "fewest interactions per user")
_MAX_INTER = flags.DEFINE_integer("max_interactions", 700, "most interactions per user")
_MIN_USERS = flags.DEFINE_integer("min_users", 1000, "users = max(2 * clients, min_users)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of data, sampling and initialisation")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "seconds allowed per configuration")
_JSON_OUT = flags.DEFINE_string("json_out", None, "also write every result to this JSON file")
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "also write the tables as a markdown page here (headed by the command, "
    "commit and machine)")
_SINGLE = flags.DEFINE_bool("single", False, "internal: run one configuration, print JSON")
_NUM_CLIENTS = flags.DEFINE_integer("num_clients", 64, "--single: clients per round")
_NUM_ITEMS = flags.DEFINE_integer("num_items", 10000, "--single: catalogue size")

_TAG = "BENCH_SCALE_JSON "
_PARTIAL = "BENCH_SCALE_PARTIAL "
MIB = 2.0**20


def _now():
  return time.perf_counter()


# ---------------------------------------------------------------------------------------
# Memory of this process.


def _status_kib(field):
  """``VmRSS`` / ``VmHWM`` of /proc/self/status in bytes (None if unreadable)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process; False if not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss(resettable: bool):
  if resettable:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
      return hwm
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _device_peak(jax):
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|bf16|f16|s32|u32|f32|s64|u64|f64)\[([0-9,]*)\]")
_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8
}


def hlo_arrays(hlo_text: str, top: int = 4):
  """The ``top`` largest distinct array shapes of an HLO module: ``[(bytes, "f32[a,b]")]``."""
  shapes = {}
  for dtype, dims in _SHAPE.findall(hlo_text):
    d = tuple(int(x) for x in dims.split(",") if x)
    shapes[(dtype, d)] = _BYTES[dtype] * math.prod(d)
  ranked = sorted(shapes.items(), key=lambda kv: -kv[1])[:top]
  return [(b, f"{t}[{','.join(map(str, d))}]") for (t, d), b in ranked]


def clients_by_items(hlo_text: str, clients: int, items: int, dim: int):
  """Shapes of the HLO with a clients dimension and a catalogue dimension.

  ``clients == dim`` makes ``[items, dim]`` ambiguous; such 2-D shapes are not flagged.
  """
  out = set()
  for dtype, dims in _SHAPE.findall(hlo_text):
    d = [int(x) for x in dims.split(",") if x and int(x) != 1]
    if items in d and clients in d and d.index(clients) != d.index(items):
      rest = list(d)
      rest.remove(items)
      if clients == dim and len(d) <= 2 and rest == [dim]:
        continue
      out.add(f"{dtype}[{','.join(map(str, d))}]")
  return sorted(out)


# ---------------------------------------------------------------------------------------
# One configuration (runs in its own process).


def run_single(num_clients: int, num_items: int) -> dict:
  import jax
  from fedras_jax import experiment
  from fedras_jax.config import TrainConfig
  from fedras_jax.data import synthetic
  from fedras_jax.federated import client_data_from_split
  from fedras_jax.runtime import tune_host_allocator

  tuned = tune_host_allocator()
  out = dict(method=_METHOD.value,
             downlink_compression=_DOWNLINK.value,
             clients=num_clients,
             items=num_items,
             dim=_DIM.value,
             malloc_tuned=tuned,
             platform=jax.devices()[0].platform)
  num_users = max(2 * num_clients, _MIN_USERS.value)
  t = _now()
  split = synthetic.synthetic_split(num_users,
                                    num_items,
                                    exponent=_ZIPF.value,
                                    median=_MEDIAN.value,
                                    sigma=_SIGMA.value,
                                    min_interactions=_MIN_INTER.value,
                                    max_interactions=_MAX_INTER.value,
                                    seed=_SEED.value)
  out["data_s"] = _now() - t
  out["users"] = num_users
  out["interactions"] = int(split.seen_items.shape[0])

  rounds = _ROUNDS.value
  config = TrainConfig(method=_METHOD.value,
                       dim=_DIM.value,
                       rounds=rounds + 1,
                       clients_per_round=num_clients,
                       num_lanes=_LANES.value,
                       downlink_compression=_DOWNLINK.value,
                       seed=_SEED.value,
                       quiet=True)
  t = _now()
  round_config = experiment.build_round_config(config, split, seeds=[config.seed])
  out["capacity_s"] = _now() - t
  out["slot_capacity"] = round_config.slot_capacity
  out["buckets"] = [list(b) for b in round_config.client_buckets]
  sim = experiment.build_simulation(config, split, round_config=round_config)
  server, clients = sim.server, sim.clients
  data = client_data_from_split(split)
  round_fn = jax.jit(sim.round_fn, donate_argnums=(0, 1))
  hp, dense_round_bits = sim.hp, sim.dense_round_bits
  leaves = jax.tree.leaves((server, clients, data))
  out["state_bytes"] = int(sum(x.nbytes for x in leaves if hasattr(x, "nbytes")))
  out["item_table_bytes"] = int(server.items.nbytes)
  del split, data  # counted only: the round holds its own copy

  jax.block_until_ready((server, clients))
  resettable = _reset_peak()
  out["peak_method"] = "VmHWM reset" if resettable else "ru_maxrss (not reset)"
  out["rss_before_compile"] = _status_kib("VmRSS")
  t = _now()
  compiled = round_fn.lower(server, clients, hp).compile()
  out["compile_s"] = _now() - t
  out["compile_peak_rss"] = _peak_rss(resettable)
  try:
    mem = compiled.memory_analysis()
    out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
    out["xla_arg_bytes"] = int(mem.argument_size_in_bytes)
    out["xla_out_bytes"] = int(mem.output_size_in_bytes)
  except Exception as e:  # noqa: BLE001 -- not every backend/version reports it
    out["xla_temp_bytes"] = None
    out["memory_analysis_error"] = repr(e)
  try:
    text = compiled.as_text()
    out["hlo_largest"] = hlo_arrays(text)
    out["hlo_clients_by_items"] = clients_by_items(text, num_clients, num_items, _DIM.value)
    del text
  except Exception as e:  # noqa: BLE001
    out["hlo_error"] = repr(e)

  print(_PARTIAL + json.dumps(out), flush=True)  # what a timed-out parent still gets
  if _COMPILE_ONLY.value:
    return out

  _reset_peak()
  out["rss_before_rounds"] = _status_kib("VmRSS")
  times = []
  while len(times) < rounds + 1:  # round 0: warm-up (first call)
    t = _now()
    server, clients, metrics = jax.block_until_ready(compiled(server, clients, hp))
    times.append(_now() - t)
    if sum(times[1:] or times) >= _ROUND_BUDGET.value:
      break
  out["first_round_s"] = times[0]
  out["round_s"] = times[1:]
  out["median_from_first"] = len(times) == 1
  out["median_s"] = statistics.median(times[1:] or times)
  out["updates_per_s"] = num_clients / out["median_s"]
  out["peak_rss"] = _peak_rss(resettable)
  baseline = out["rss_before_compile"] if not resettable else out["rss_before_rounds"]
  # No /proc (not Linux): no baseline, no growth figure.
  out["rss_growth"] = None if baseline is None else out["peak_rss"] - baseline
  out["device_peak_bytes"] = _device_peak(jax)
  m = jax.device_get(metrics)
  out["touched_items"] = int(m.touched_items)
  out["bits_up_mean"] = float(np.mean(m.bits_up))
  out["bits_up_ratio"] = float(np.mean(m.bits_up)) / dense_round_bits
  out["bits_down_ratio"] = float(m.bits_down) / dense_round_bits
  out["skipped"] = int(m.skipped)
  out["loss"] = float(np.mean(m.loss))
  return out


# ---------------------------------------------------------------------------------------
# The driver.


def growth_exponent(x, y):
  """Least-squares slope of ``log y`` on ``log x`` (None with < 2 usable points)."""
  pts = [(math.log(a), math.log(b)) for a, b in zip(x, y) if a and b and a > 0 and b > 0]
  if len(pts) < 2:
    return None
  lx, ly = np.array(pts).T
  return float(np.polyfit(lx, ly, 1)[0])


def _child(num_clients, num_items, rounds, method):
  """Runs one configuration of ``method`` in a fresh interpreter; its result dict (or an
  error)."""
  args = [
      sys.executable, "-m", "experiments.bench_scale", "--single", f"--num_clients={num_clients}",
      f"--num_items={num_items}", f"--method={method}"
  ]
  for f in (_DIM, _LANES, _ZIPF, _MEDIAN, _SIGMA, _MIN_INTER, _MAX_INTER, _MIN_USERS, _SEED,
            _ROUND_BUDGET):
    args.append(f"--{f.name}={f.value}")
  args += [
      f"--rounds={rounds}",
      "--downlink_compression" if _DOWNLINK.value else "--nodownlink_compression",
      f"--compile_only={_COMPILE_ONLY.value}"
  ]
  t = _now()
  try:
    proc = subprocess.run(args,
                          capture_output=True,
                          text=True,
                          timeout=_TIMEOUT.value,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stdout, why = proc.stdout, f"exit {proc.returncode}"
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    proc, why = None, f"timed out after {_TIMEOUT.value} s"
  partial = None
  for line in stdout.splitlines():
    if line.startswith(_TAG):
      res = json.loads(line[len(_TAG):])
      res["wall_s"] = _now() - t
      return res
    if line.startswith(_PARTIAL):
      partial = json.loads(line[len(_PARTIAL):])
  res = partial or dict(clients=num_clients, items=num_items)
  if proc is not None and proc.returncode != 0:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why += ": " + " | ".join(tail)
  if partial is not None and not _COMPILE_ONLY.value:
    why += " (compiled; no round finished)"
  res["error"] = why
  res["wall_s"] = _now() - t
  return res


def _mib(b):
  return "-" if b is None else f"{b / MIB:,.0f}"


def _num(v, fmt):
  """``format(v, fmt)``, or a dash of the same width when ``v`` is None."""
  if v is None:
    width = re.match(r">?(\d*)", fmt).group(1)
    return format("-", f">{width}" if width else "")
  return format(v, fmt)


def curve_lines(title, key, results):
  """One curve's markdown: its table, growth exponents and HLO findings (``key``: the curve's
  variable, ``"clients"`` or ``"items"``); returns ``(lines, exponents)``."""
  lines = [
      f"## {title}", "",
      f"| {key:>8} | {'users':>6} | {'slots S':>8} | {'touched':>8} | {'compile s':>9} | "
      f"{'1st round s':>11} | {'s/round':>9} | {'x prev':>6} | {'x base':>6} | {'updates/s':>9} | "
      f"{'state MiB':>9} | {'xla temp MiB':>12} | {'peak RSS MiB':>12} | "
      f"{'RSS growth MiB':>14} | {'up/dense':>8} |",
      f"|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 13}|{'-' * 11}|"
      f"{'-' * 8}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 14}|{'-' * 14}|{'-' * 16}|{'-' * 10}|"
  ]
  prev = None
  for r in results:
    if "compile_s" not in r:  # nothing came back
      lines.append(f"| {r[key]:>8} | error: {r.get('error')} |")
      continue
    med = r.get("median_s")
    ratio = "-" if prev is None or med is None else f"{med / prev:.2f}"
    prev = med
    base = r.get("baseline_median_s")
    over_base = "-" if base is None or med is None else f"{med / base:.2f}"
    star = "*" if r.get("median_from_first") else " "
    lines.append(
        f"| {r[key]:>8} | {r['users']:>6} | {r['slot_capacity']:>8} | "
        f"{_num(r.get('touched_items'), '>8')} | {r['compile_s']:>9.1f} | "
        f"{_num(r.get('first_round_s'), '>11.2f')} | {_num(med, '>8.3f')}{star} | {ratio:>6} | "
        f"{over_base:>6} | "
        f"{_num(r.get('updates_per_s'), '>9.1f')} | {_mib(r['state_bytes']):>9} | "
        f"{_mib(r.get('xla_temp_bytes')):>12} | {_mib(r.get('peak_rss')):>12} | "
        f"{_mib(r.get('rss_growth')):>14} | {_num(r.get('bits_up_ratio'), '>8.4f')} |")
    if r.get("error"):
      lines.append(f"|          | {r['error']}; compile peak RSS "
                   f"{_mib(r.get('compile_peak_rss'))} MiB |")
  ok = [r for r in results if r.get("median_s") is not None]
  xs = [r[key] for r in ok]
  exps = {
      "s/round": growth_exponent(xs, [r["median_s"] for r in ok]),
      "peak RSS": growth_exponent(xs, [r["peak_rss"] for r in ok]),
      "RSS growth": growth_exponent(xs, [r["rss_growth"] for r in ok]),
  }
  compiled = [r for r in results if r.get("xla_temp_bytes")]
  exps["xla temp"] = growth_exponent([r[key] for r in compiled],
                                     [r["xla_temp_bytes"] for r in compiled])
  exps["state"] = growth_exponent([r[key] for r in compiled], [r["state_bytes"] for r in compiled])
  exps["slots S"] = growth_exponent([r[key] for r in compiled],
                                    [r["slot_capacity"] for r in compiled])
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  lines += [
      "", f"Growth exponents b (least squares of log y on log {key}: y ~ {key}^b), "
      f"{key} {min(r[key] for r in results)}..{max(r[key] for r in results)}: "
      + ", ".join(f"{k} {fmt(v)}" for k, v in exps.items()) + "."
  ]
  if any(r.get("median_from_first") for r in ok):
    lines.append("\\* only the warm-up round was run (it took longer than --round_budget_s): "
                 "it is the measure.")
  lines.append("")
  for r in compiled:
    largest = ", ".join(f"{s} ({b / MIB:,.1f} MiB)" for b, s in r.get("hlo_largest", [])[:3])
    flagged = r.get("hlo_clients_by_items")
    lines.append(f"- {key}={r[key]}: largest HLO arrays {largest}"
                 + (f"; CLIENTS x ITEMS arrays: {flagged}" if flagged else ""))
  return lines + [""], exps


def main(argv):
  del argv
  from fedras_jax.config import TrainConfig  # checks what every configuration shares
  for method in filter(None, (_METHOD.value, _BASELINE.value)):
    TrainConfig(method=method,
                dim=_DIM.value,
                num_lanes=_LANES.value,
                seed=_SEED.value,
                rounds=_ROUNDS.value).validate()
  if _SINGLE.value:
    res = run_single(_NUM_CLIENTS.value, _NUM_ITEMS.value)
    print(_TAG + json.dumps(res), flush=True)
    return
  for flag in (_MARKDOWN, _JSON_OUT):  # where the results go is checked before the work
    if flag.value:
      outputs.check_writable_file(flag.value, f"--{flag.name}")
  import jax  # only for the header line

  from experiments import pages

  # --quick sets the sizes a user did not give.
  quick = lambda flag, small: small if _QUICK.value and not flag.present else flag.value
  rounds = quick(_ROUNDS, 2)
  clients = flag_lib.parse_values("--clients", quick(_CLIENTS, "16,32,64,128"),
                                  flag_lib.positive_int, "a positive integer")
  items = flag_lib.parse_values("--items", quick(_ITEMS, "1000,10000,100000"),
                                flag_lib.positive_int, "a positive integer")
  fixed_items, fixed_clients = quick(_FIXED_ITEMS, 2000), quick(_FIXED_CLIENTS, 16)
  curves = [c.strip() for c in _CURVES.value.split(",") if c.strip()]
  if not curves or set(curves) - {"clients", "items"}:
    raise ValueError(f"--curves={_CURVES.value}: name one or both of clients, items")
  wall = _now()
  down = "compressed" if _DOWNLINK.value and _METHOD.value != "uncompressed" else "dense"
  setting = [
      f"method {_METHOD.value} (downlink {down})" +
      (f" against {_BASELINE.value}" if _BASELINE.value else "")
      + f", FedMF d={_DIM.value}, {_LANES.value} lanes; per configuration a fresh process: "
      f"compile, 1 warm-up round, up to {rounds} timed rounds (at most "
      f"{_ROUND_BUDGET.value:g} s of them)" + ("; COMPILE ONLY" if _COMPILE_ONLY.value else ""),
      f"synthetic data: Zipf({_ZIPF.value}) item popularity, users lognormal(median "
      f"{_MEDIAN.value:g}, sigma {_SIGMA.value:g}) clipped to [{_MIN_INTER.value}, "
      f"{_MAX_INTER.value}] interactions, users = max(2 x clients, {_MIN_USERS.value}), "
      f"seed {_SEED.value}"
  ]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {pages.cpus_text()}; "
        + "\n".join(setting),
        flush=True)
  runs = []
  if "clients" in curves:
    runs += [("clients", m, fixed_items) for m in clients]
  if "items" in curves:
    runs += [("items", fixed_clients, i) for i in items]
  results = {}
  for curve, m, i in runs:
    base = _child(m, i, rounds, _BASELINE.value) if _BASELINE.value else {}
    res = _child(m, i, rounds, _METHOD.value)
    res["baseline_median_s"] = base.get("median_s")
    results.setdefault(curve, []).append(res)
    print(f"  clients={m} items={i}: " +
          (f"{res['median_s']:.3f} s/round" if res.get("median_s") is not None else "") +
          (f" ({_BASELINE.value} {base['median_s']:.3f})" if base.get("median_s") else "") +
          (f" {res['error']}" if res.get("error") else "") +
          (f" {_BASELINE.value}: {base['error']}" if base.get("error") else "")
          + f" ({res['wall_s']:.0f} s)",
          flush=True)
  titles = {
      "clients": f"Clients per round ({fixed_items} items, {_METHOD.value}, downlink "
                 f"{down})",
      "items": f"Catalogue size ({fixed_clients} clients per round, {_METHOD.value}, "
               f"downlink {down})"
  }
  lines, exponents = [], {}
  for curve, res in results.items():
    curve_text, exponents[curve] = curve_lines(titles[curve], curve, res)
    lines += curve_text
  lines += [
      "slots S: the round's static slot buffer (positives + distinct negatives of the "
      "sampled clients, rounded up); touched: items with an update in the last round; "
      "compile: AOT lower+compile; 1st round: the warm-up call; s/round: median of the "
      "timed rounds; x prev: ratio to the previous row; x base: to --baseline_method's "
      "s/round at the same configuration, run just before; state: the round's input arrays; "
      "xla temp: XLA's planned scratch; peak RSS: process high-water mark while running "
      "rounds; RSS growth: over the resident memory before the rounds; up/dense: mean "
      "uplink bits over the dense float32 table."
  ]
  done = [r for rs in results.values() for r in rs if "compile_s" in r]
  if done:
    top = max(done, key=lambda r: (r["items"], r["clients"]))
    dev = top.get("device_peak_bytes")
    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"
    speed = (top.get("error", "")
             if top.get("median_s") is None else f"{top['median_s']:.3f} s/round")
    lines += [
        "", f"Largest catalogue: {top['items']} items x {top['clients']} clients: peak RSS "
        f"{gib(top.get('peak_rss'))} while running rounds, {gib(top.get('compile_peak_rss'))} "
        f"while compiling; XLA temp {gib(top.get('xla_temp_bytes'))}; device peak "
        f"{'n/a' if dev is None else gib(dev)}; {speed}."
    ]
  print("\n" + "\n".join(lines))
  if _MARKDOWN.value:
    pages.write_page(_MARKDOWN.value, "Cost of a round as the work grows",
                     "experiments.bench_scale", setting, lines)
  if _JSON_OUT.value:
    outputs.write_json(_JSON_OUT.value, dict(results=results, exponents=exponents), indent=1)
  print(f"\ntotal wall time {_now() - wall:.1f} s")


if __name__ == "__main__":
  flag_lib.run_main(main)
