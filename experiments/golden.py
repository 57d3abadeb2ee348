"""Short runs of every ``configs/*.flags`` against recorded results: a refactor that
changes what a config computes shows here.

Each config runs its first ``ROUNDS`` (3) rounds (seed 0, its own settings otherwise,
no workdir) and its final evaluation row, less the wall-clock fields, is compared
with ``tests/golden/configs.json``::

    python -m experiments.golden                  # compare every config (data as train finds it)
    python -m experiments.golden --record         # (re)write the recorded rows

``tests/test_golden_configs.py`` runs the comparison for the main ML-100K config in the
suite. Values are compared to a relative 1e-5 (1e-3 for 16-bit configs; integers
exactly): XLA:CPU results are bit-identical for one machine and core count, but its
reductions are partitioned by the number of usable cores, so another count (another
machine, or ``taskset``) moves the last bits.
"""
import contextlib
import json
import math
import pathlib

from absl import flags

from fedras_jax import flags as flag_lib
from fedras_jax import training
from fedras_jax.config import TrainConfig
from fedras_jax.workdir import TIMING_FIELDS

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GOLDEN = REPO / "tests" / "golden" / "configs.json"
ROUNDS = 3
RTOL = 1e-5
# 16-bit values round the actions to bfloat16, which turns a last-bit difference in
# float32 (another core count, below) into a ~1e-4 one.
RTOL_16_BIT = 1e-3

_RECORD = flags.DEFINE_boolean("record", False, f"write {GOLDEN.relative_to(REPO)}")
_ONLY = flags.DEFINE_list("configs", [], "config names (file stems) to run; default all")
_GOLDEN_DATA_DIR = flags.DEFINE_string("golden_data_dir", None,
                                       "data directory of the runs (default the library's)")


def config_of(path: pathlib.Path, data_dir=None) -> TrainConfig:
  """The ``TrainConfig`` of flagfile ``path``, cut to ``ROUNDS`` rounds, no files."""
  values = flags.FlagValues()
  flag_lib.define_train_flags(values)
  with contextlib.chdir(REPO):  # flagfiles include one another by repo-relative paths
    values(["golden", f"--flagfile={path.relative_to(REPO)}"])
  config = flag_lib.config_from_flags(TrainConfig, values)
  kwargs = dict(rounds=ROUNDS, eval_every=ROUNDS, workdir=None, quiet=True)
  if data_dir is not None:
    kwargs["data_dir"] = data_dir
  return TrainConfig(**{**config.__dict__, **kwargs}).validate()


def final_row(path: pathlib.Path, data_dir=None) -> dict:
  """The config's final evaluation row after ``ROUNDS`` rounds, wall-clock fields removed."""
  summary = training.train(config_of(path, data_dir), log=lambda _: None)
  return {k: v for k, v in summary["final"].items() if k not in TIMING_FIELDS}


def tolerance(path: pathlib.Path) -> float:
  """The relative tolerance of config ``path``'s fields (``RTOL``; ``RTOL_16_BIT`` for
  16-bit values)."""
  return RTOL_16_BIT if config_of(path).value_bits == 16 else RTOL


def differences(recorded: dict, row: dict, rtol: float = RTOL) -> list:
  """``["key: recorded -> now", ...]`` for every field that differs beyond ``rtol``."""
  out = []
  for key in sorted(set(recorded) | set(row)):
    a, b = recorded.get(key), row.get(key)
    same = (a == b or (isinstance(a, float) and isinstance(b, (int, float))
                       and math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)))
    if not same:
      out.append(f"{key}: {a!r} -> {b!r}")
  return out


def main(argv):
  del argv
  paths = sorted(CONFIGS.glob("*.flags"))
  if _ONLY.value:
    unknown = sorted(set(_ONLY.value) - {p.stem for p in paths})
    if unknown:
      raise ValueError(f"--configs: no configs/NAME.flags for {', '.join(unknown)}; "
                       f"known: {', '.join(p.stem for p in paths)}")
    paths = [p for p in paths if p.stem in _ONLY.value]
  recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
  failed = []
  for path in paths:
    row = final_row(path, _GOLDEN_DATA_DIR.value)
    if _RECORD.value:
      recorded[path.stem] = row
      print(f"{path.stem}: recorded")
      continue
    diffs = differences(recorded.get(path.stem, {}), row, tolerance(path))
    print(f"{path.stem}: {'same' if not diffs else 'DIFFERS: ' + '; '.join(diffs)}")
    failed += [path.stem] if diffs else []
  if _RECORD.value:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
  elif failed:
    raise SystemExit(f"error: {', '.join(failed)} differ from {GOLDEN.relative_to(REPO)}")


if __name__ == "__main__":
  flag_lib.run_main(main)
