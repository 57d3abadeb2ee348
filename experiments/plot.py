"""Plots HR@10 and NDCG@10 of one or several runs against round, bits sent and time.

    python -m experiments.plot --out=/tmp/cmp.png /tmp/run_fedras /tmp/run_dense
    python -m experiments.plot --workdirs=/tmp/a,/tmp/b --labels=FedRAS,dense --out=cmp.png

Reads each workdir's ``metrics.jsonl`` (written by ``experiments.train``) and draws a
2 x 3 grid: rows HR@10 and NDCG@10; columns against the round, against the total
bits sent up and down (``bits_up_total + bits_down_total``, log scale) and against
the simulated seconds (``sim_seconds``). Sampled-protocol metrics where every run has
them, else full-ranking ones (runs of ``--eval_protocol=full``). Needs matplotlib (the
``plot`` extra: ``pip install -e '.[plot]'``).
"""
import json
import pathlib
from typing import List, Sequence, Tuple

from absl import app, flags

from experiments import pages
from fedras_jax import flags as flag_lib

_WORKDIRS = flags.DEFINE_list("workdirs", [], "run directories (also accepted as arguments)")
_LABELS = flags.DEFINE_list(
    "labels", [], "legend labels, one per workdir (default: from each "
    "run's config: method, dataset and the directory name)")
_OUT = flags.DEFINE_string("out", "metrics.png", "PNG file to write")
_TITLE = flags.DEFINE_string("title", "", "figure title")

METRICS = (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"))
FULL_METRICS = (("full_hr@10", "HR@10, full ranking"), ("full_ndcg@10", "NDCG@10, full ranking"))
AXES = (("round", "round", False), ("bits_sent", "bits sent, up + down (all clients)", True),
        ("sim_seconds", "simulated seconds", False))


def read_rows(workdir) -> List[dict]:
  """The evaluation rows of a run (a torn last line, from a killed run, is ignored)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist (is {workdir} a workdir of "
                            "experiments.train?)")
  lines = path.read_text().splitlines()
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{i + 1}: not a JSON row") from None
    if not isinstance(row, dict):
      raise ValueError(f"{path}:{i + 1}: not a JSON object")
    up, down = row.get("bits_up_total"), row.get("bits_down_total")
    # null: a number that was not finite (strict JSON); the point is left out
    row["bits_sent"] = None if up is None or down is None else up + down
    rows.append(row)
  if not rows:
    raise ValueError(f"{path} has no rows yet")
  return rows


def default_label(workdir) -> str:
  workdir = pathlib.Path(workdir)
  try:
    config = json.loads((workdir / "config.json").read_text())
    return f"{config['method']} {config['dataset']} ({workdir.name})"
  except (OSError, ValueError, KeyError):
    return workdir.name or str(workdir)


def shared_metrics(runs: Sequence[Tuple[str, List[dict]]]):
  """``METRICS`` if every run has them, else ``FULL_METRICS`` if every run has those;
  ``ValueError`` naming a run that has neither (runs of different protocols)."""
  for metrics in (METRICS, FULL_METRICS):
    if all(any(metrics[0][0] in r for r in rows) for _, rows in runs):
      return metrics
  has = lambda rows, m: any(m[0][0] in r for r in rows)
  label = next(label for label, rows in runs if not has(rows, METRICS))
  raise ValueError(f"run {label!r} has no sampled-protocol metrics and another run no "
                   "full-ranking ones: plot runs of one --eval_protocol together")


def plot_runs(runs: Sequence[Tuple[str, List[dict]]], out, title: str = "") -> pathlib.Path:
  """Draws ``[(label, rows), ...]`` into the PNG ``out``; returns its path."""
  metrics = shared_metrics(runs)
  plt = pages.pyplot()
  if plt is None:
    raise ImportError("no module named 'matplotlib'")
  fig, axes = plt.subplots(len(metrics),
                           len(AXES),
                           figsize=(5 * len(AXES), 3.6 * len(metrics)),
                           squeeze=False)
  for i, (metric, metric_name) in enumerate(metrics):
    for j, (x_field, x_name, log_x) in enumerate(AXES):
      ax = axes[i][j]
      for label, rows in runs:
        points = [(r[x_field], r[metric])
                  for r in rows
                  if r.get(x_field) is not None and r.get(metric) is not None]
        if points:
          xs, ys = zip(*points)
          ax.plot(xs, ys, marker="o", markersize=3, label=label)
      if log_x:
        ax.set_xscale("log")
      ax.set_xlabel(x_name)
      ax.set_ylabel(metric_name)
      ax.grid(True, alpha=0.3)
  axes[0][0].legend(fontsize="small")
  if title:
    fig.suptitle(title)
  out = pathlib.Path(out)
  pages.save_figure(fig, plt, out, dpi=100)
  return out


def main(argv):
  workdirs = list(_WORKDIRS.value) + list(argv[1:])
  if not workdirs:
    raise app.UsageError("give one or more workdirs (arguments or --workdirs)")
  labels = list(_LABELS.value)
  if labels and len(labels) != len(workdirs):
    raise app.UsageError(f"--labels has {len(labels)} entries for {len(workdirs)} workdirs")
  runs = [(labels[k] if labels else default_label(w), read_rows(w)) for k, w in enumerate(workdirs)]
  try:
    path = plot_runs(runs, _OUT.value, _TITLE.value)
  except ImportError as e:
    raise app.UsageError(f"{e}; install matplotlib (pip install -e '.[plot]')") from None
  print(f"wrote {path}")


if __name__ == "__main__":
  flag_lib.run_main(main, arguments=True)
