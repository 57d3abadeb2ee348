"""absl flags generated from a config dataclass, so binaries and configs never drift."""
import dataclasses
import typing

from absl import flags

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           bool: flags.DEFINE_boolean}


def _base_type(tp):
  if typing.get_origin(tp) is typing.Union:  # Optional[X]
    return next(a for a in typing.get_args(tp) if a is not type(None))
  return tp


def define_flags(config_cls, helps: dict, flag_values=flags.FLAGS):
  """Defines one absl flag per field of ``config_cls`` (default: the field default)."""
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    tp = _base_type(hints[field.name])
    _DEFINE[tp](field.name, field.default, helps.get(field.name, field.name),
                flag_values=flag_values)


def config_from_flags(config_cls, flag_values=flags.FLAGS):
  """Builds ``config_cls`` from the parsed flags."""
  return config_cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_cls)})
