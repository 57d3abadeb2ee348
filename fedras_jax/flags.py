"""absl flags generated from a config dataclass, so binaries and configs never drift."""
import dataclasses
import functools
import math
import os
import sys
import typing
from fractions import Fraction
from typing import Any, Callable, NoReturn, Tuple

from absl import app, flags

import jax

from fedras_jax import distributed
from fedras_jax.config import TrainConfig
from fedras_jax.data import FetchError
from fedras_jax.workdir_lock import WorkdirLockError

_DEFINE = {
    int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
    bool: flags.DEFINE_boolean
}


def _base_type(tp):
  if typing.get_origin(tp) is typing.Union:  # Optional[X]
    return next(a for a in typing.get_args(tp) if a is not type(None))
  return tp


def define_flags(config_cls, flag_values=flags.FLAGS):
  """Defines one absl flag per field of ``config_cls``: the field's default, and its
  ``metadata["help"]`` as the help text."""
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    tp = _base_type(hints[field.name])
    _DEFINE[tp](field.name,
                field.default,
                field.metadata.get("help", field.name),
                flag_values=flag_values)


def define_train_flags(flag_values=flags.FLAGS):
  """The flags of a binary that trains: one per ``TrainConfig`` field, the process
  group's (``distributed.ProcessGroup``) and ``--compilation_cache``; once per
  ``flag_values`` (binaries that import one another share them)."""
  if "compilation_cache" in flag_values:
    return
  define_flags(TrainConfig, flag_values)
  define_flags(distributed.ProcessGroup, flag_values)
  flags.DEFINE_string(
      "compilation_cache",
      None, "directory of JAX's persistent compilation cache: a rerun with the same shapes loads "
      "its compiled round instead of compiling it (default $FEDRAS_COMPILATION_CACHE, else "
      "JAX_COMPILATION_CACHE_DIR, else ~/.cache/fedras_jax/compilation_cache; none: off)",
      flag_values=flag_values)


def refuse_process_group(binary: str, flag_values=flags.FLAGS):
  """A ``ValueError`` if the process-group flags (``--coordinator``, ...) ask for
  several processes: ``binary`` runs in one (it has the flags as a training binary)."""
  if config_from_flags(distributed.ProcessGroup, flag_values).validate().coordinator:
    raise ValueError(f"--coordinator: {binary} runs in one process")


def config_from_flags(config_cls, flag_values=flags.FLAGS):
  """Builds ``config_cls`` from the parsed flags."""
  return config_cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_cls)})


# ------------------------------------------------------------ user errors --
#
# Every binary runs its ``main`` through ``run_main``: an error caused by what the user
# gave (a flag, a data file, a workdir, a full disk) ends the process with one line
# ``error: ...`` on stderr and exit status 1, never a traceback. Set
# ``FEDRAS_TRACEBACK=1`` to get the traceback instead (for bug reports).

# Exceptions that report bad input rather than a bug: ValueError covers the data
# format, checkpoint, workdir and config errors, OSError the files, FloatingPointError
# a run that diverged (``--on_nonfinite=stop``), ImportError a missing optional extra.
USER_ERRORS = (ValueError, OSError, FloatingPointError, FetchError, WorkdirLockError, ImportError,
               app.UsageError, flags.Error, distributed.DistributedError)


def one_line(error: BaseException) -> str:
  """``"error: <message>"`` on one line (an OSError without a message: its type)."""
  text = " ".join(str(error).split()) or type(error).__name__
  return f"error: {text}"


def fail(error) -> NoReturn:
  """Exits with status 1 after printing ``one_line(error)`` (or ``error: <str>``)."""
  sys.exit(one_line(error) if isinstance(error, BaseException) else one_line(ValueError(error)))


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def guarded(main):
  """``main`` with the ``USER_ERRORS`` it raises turned into ``fail``."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except USER_ERRORS as e:
      if os.environ.get("FEDRAS_TRACEBACK"):
        raise
      fail(e)
    except jax.errors.JaxRuntimeError as e:  # a lost peer in one line; a bug with its trace
      lost = distributed.lost_peer(e)
      if lost is None or os.environ.get("FEDRAS_TRACEBACK"):
        raise
      fail(lost)
    except KeyboardInterrupt as e:  # Ctrl-C: what a workdir holds is resumed by the same command
      if os.environ.get("FEDRAS_TRACEBACK"):
        raise
      # (a binary that knows better raises KeyboardInterrupt(how to resume) from Ctrl-C's)
      hint = str(e) or ("a run with a --workdir resumes from its last checkpoint when the same "
                        "command runs again")
      print(f"interrupted ({hint})", file=sys.stderr)
      sys.exit(130)

  return wrapper


def run_main(main, argv=None, *, arguments: bool = False):
  """``absl.app.run(main)``, with flag errors and ``USER_ERRORS`` raised by ``main`` as
  one line ``error: ...`` and exit status 1. Without ``arguments`` a binary takes flags
  only: anything else on its command line is refused before ``main`` runs."""

  def flags_only(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    return main(argv)

  app.run(guarded(main if arguments else flags_only), argv=argv, flags_parser=_parse_flags)


# --------------------------------------------------------- list-valued flags --


def parse_values(flag: str, text: str, cast: Callable[[str], Any], what: str) -> list:
  """``text`` split at commas, each entry ``cast``; a ``ValueError`` naming ``flag``,
  the whole value and the entry that is not ``what`` (e.g. "an integer") or that repeats
  an earlier one (``--seeds=0,0`` would count one run as two seeds)."""
  out = []
  for entry in text.split(","):
    entry = entry.strip()
    try:
      value = cast(entry)
    except (ValueError, TypeError, ArithmeticError):
      raise ValueError(f"{flag}={text}: {entry!r} is not {what}") from None
    if value in out:
      raise ValueError(f"{flag}={text}: {entry!r} repeats an earlier entry")
    out.append(value)
  return out


def validate_points(base, flag: str, text: str, points) -> None:
  """Validates ``base`` with each ``{setting: value}`` of ``points`` (what flag ``flag``
  with value ``text`` asks for): ``ValueError`` naming the flag, its value and the
  setting at fault."""
  for point in points:
    try:
      dataclasses.replace(base, **point).validate()
    except ValueError as e:
      raise ValueError(f"{flag}={text}: {e}") from None


def finite_float(text: str) -> float:
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(text)
  return value


def positive_int(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise ValueError(text)
  return value


def fraction(text: str) -> float:
  """``"1/32"`` or ``"0.25"`` -> a float in (0, 1]."""
  value = float(Fraction(text))
  if not 0 < value <= 1:
    raise ValueError(text)
  return value


def _boolean(text: str) -> bool:
  lowered = text.lower()
  if lowered not in ("true", "false", "1", "0"):
    raise ValueError(text)
  return lowered in ("true", "1")


def field_parser(config_cls, name: str, flag: str) -> Tuple[Callable[[str], Any], str]:
  """``(cast, what)`` turning text into a value of ``config_cls``'s field ``name``;
  ``ValueError`` naming ``flag`` if there is no such field."""
  hints = typing.get_type_hints(config_cls)
  if name not in {f.name for f in dataclasses.fields(config_cls)}:
    raise ValueError(f"{flag}: no setting {name!r} (settings are the flags of "
                     "experiments.train, e.g. dim, model, method)")
  tp = _base_type(hints[name])
  return {
      int: (int, "an integer"), float: (finite_float, "a finite number"),
      bool: (_boolean, "true or false"), str: (str, "a string")
  }[tp]
