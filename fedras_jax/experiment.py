"""An experiment: what a run of a ``TrainConfig`` steps through, built in one place.

``build_experiment(config)`` loads the data and returns an ``Experiment``: the split,
the items and negatives it is scored on, the evaluation function and the
``Simulation`` (model, static round shape, compressors with their budgets, the pure
round function, its hyper-parameters and the initial states). ``training.train``,
``sweep``, ``compare`` and the benchmarks build from these functions, so a setting
means the same thing everywhere.
"""
import contextlib
import logging
from typing import Any, Callable, NamedTuple

import jax
import optax

from fedras_jax import data as data_lib
from fedras_jax import distributed
from fedras_jax.compress import cold_start, dense_bits, error_feedback, identity, row_gains
from fedras_jax.compress.registry import auto_downlink_max_k, make_compressor
from fedras_jax.config import DATASETS, TrainConfig
from fedras_jax.federated import (LocalHParams, RoundConfig, RoundHParams, client_data_from_split,
                                  init_states, make_round, negative_exclusions, plan_capacity)
from fedras_jax.federated.bandwidth import draw_bandwidth
from fedras_jax.metrics import make_evaluate
from fedras_jax.models import model_for_run
import numpy as np

_log = logging.getLogger(__name__)


def build_compressors(config: TrainConfig, num_items: int, item_dim: int):
  """``(uplink, downlink)`` compressors of ``config.method`` (see ``compress.registry``).

  The uplink sends per-row gains with ``gain_bits`` (``row_gains``). The downlink is
  ``identity`` for uncompressed runs and without ``downlink_compression`` (exact:
  nothing to feed back); otherwise the uplink's method built with ``downlink_max_k``
  action slots (0: the larger of ``max_k`` and ``auto_downlink_max_k``, the budget's K
  past the uplink's bound of 128), started cold each round without
  ``downlink_warm_start`` and with error feedback under ``downlink_feedback``. The uplink
  addresses its rows by ``index_coding``; the downlink by the catalog (the server's update
  touches most rows, so a bitmap would only add bits).
  """
  up = _compressor(config, num_items, item_dim, config.max_k, config.index_coding)
  if up.name == "identity" or not config.downlink_compression:
    return up, identity(num_items)
  down_k = config.downlink_max_k or max(
      config.max_k, auto_downlink_max_k(num_items, item_dim, config.payload_ratio,
                                        config.value_bits))
  down = _compressor(config, num_items, item_dim, down_k, "catalog")
  down = down if config.downlink_warm_start else cold_start(down)
  return up, error_feedback(down) if config.downlink_feedback else down


def _compressor(config: TrainConfig, num_items: int, item_dim: int, max_k: int, index_coding: str):
  """``config.method``'s compressor with ``max_k`` action slots and ``index_coding``, with
  row gains under ``gain_bits``."""
  c = make_compressor(config.method,
                      num_items,
                      item_dim,
                      payload_ratio=config.payload_ratio,
                      max_k=max_k,
                      tau=config.tau,
                      tau_mode=config.tau_mode,
                      value_bits=config.value_bits,
                      stages=config.action_stages,
                      index_coding=index_coding)
  return row_gains(c, config.gain_bits) if config.gain_bits else c


def build_round_config(config: TrainConfig, split, seeds) -> RoundConfig:
  """The static round shape fitting every round of ``config`` for all ``seeds``."""
  excluded_indptr, _ = negative_exclusions(split, config.train_negatives)
  capacity = plan_capacity(split.num_train_per_user,
                           np.diff(excluded_indptr),
                           split.num_items,
                           seed=list(seeds),
                           rounds=config.rounds,
                           clients_per_round=config.clients_per_round,
                           local_epochs=config.local_epochs,
                           batch_size=config.batch_size,
                           neg_ratio=config.neg_ratio,
                           num_lanes=config.num_lanes)
  return RoundConfig(clients_per_round=config.clients_per_round,
                     local_epochs=config.local_epochs,
                     batch_size=config.batch_size,
                     neg_ratio=config.neg_ratio,
                     num_lanes=config.num_lanes,
                     aggregation=config.aggregation,
                     **capacity._asdict())


def build_bandwidth(config: TrainConfig, num_users: int, dense_round_bits: int):
  """``[num_users]`` bandwidths of ``config`` (uncompressed + uniform: the dense size)."""
  ratio = (1.0 if config.method == "uncompressed" and config.bandwidth == "uniform" else
           config.payload_ratio)
  return draw_bandwidth(config.bandwidth,
                        num_users,
                        dense_round_bits,
                        seed=config.seed,
                        payload_ratio=ratio,
                        tiers=[float(t) for t in config.bandwidth_tiers.split(",")],
                        sigma=config.bandwidth_sigma)


def round_hparams(config: TrainConfig, dense_round_bits: int) -> RoundHParams:
  """The traced round hyper-parameters of ``config``."""
  return RoundHParams(local=LocalHParams(user_lr=config.user_lr,
                                         item_lr=config.item_lr,
                                         dense_lr=config.dense_lr,
                                         weight_decay=config.weight_decay),
                      fluctuation=config.fluctuation,
                      compute_seconds=config.compute_seconds,
                      downlink_budget_bits=float(config.payload_ratio * dense_round_bits))


def server_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The server's SGD on the negated aggregated update: a step of ``config.server_lr``,
  or one decaying over ``config.rounds`` (``server_lr_schedule``): round ``r``
  (1-based) steps with ``server_lr x s((r - 1) / rounds)``, ``s(t) = end + (1 - end)
  c(t)`` with ``end = server_lr_end`` and ``c(t) = (1 + cos(pi t)) / 2`` (cosine) or
  ``1 - t`` (linear). The step count is optimizer state, so a resumed run continues its
  schedule."""
  lr, end, rounds = config.server_lr, config.server_lr_end, config.rounds
  if config.server_lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, decay_steps=rounds, alpha=end)
  elif config.server_lr_schedule == "linear":
    lr = optax.linear_schedule(lr, lr * end, transition_steps=rounds)
  return optax.sgd(lr)


class Simulation(NamedTuple):
  """Everything a run of ``config`` on a split steps through (see ``build_simulation``):
  the model, static round shape, server optimizer, compressors, the pure (unjitted)
  ``round_fn`` (``round_fn.stages``: its ``RoundStages``), its hyper-parameters and the
  initial server and client states."""
  model: Any
  round_config: RoundConfig
  server_opt: Any
  uplink: Any
  downlink: Any
  round_fn: Callable
  hp: RoundHParams
  server: Any
  clients: Any
  dense_round_bits: int


def build_simulation(config: TrainConfig,
                     split,
                     *,
                     round_config: RoundConfig = None,
                     mesh=None) -> Simulation:
  """Model, round and initial states of ``config`` on ``split`` (one place for train,
  the benchmarks and anything else that steps rounds). ``round_config``: the static
  round shape if already planned (default ``build_round_config`` for ``config.seed``);
  ``mesh``: devices to shard local training over (see ``make_round``)."""
  model = build_model(config)
  round_config = round_config or build_round_config(config, split, seeds=[config.seed])
  server_opt = server_optimizer(config)
  dense_round_bits = dense_bits(split.num_items, model.item_dim)
  bandwidth = build_bandwidth(config, split.num_users, dense_round_bits)
  uplink, downlink = build_compressors(config, split.num_items, model.item_dim)
  server, clients = init_states(model,
                                split.num_users,
                                split.num_items,
                                server_opt,
                                seed=config.seed,
                                bandwidth=bandwidth,
                                downlink=downlink)
  round_fn = make_round(model,
                        client_data_from_split(split, config.train_negatives),
                        round_config,
                        server_opt,
                        uplink=uplink,
                        downlink=downlink,
                        mesh=mesh)
  return Simulation(model=model,
                    round_config=round_config,
                    server_opt=server_opt,
                    uplink=uplink,
                    downlink=downlink,
                    round_fn=round_fn,
                    hp=round_hparams(config, dense_round_bits),
                    server=server,
                    clients=clients,
                    dense_round_bits=dense_round_bits)


# Seed offset of the validation negatives: never the test negatives' draw.
_VALID_NEGATIVES_SEED = 7_919


def run_mesh(config: TrainConfig):
  """The ``("clients",)`` mesh over every global device that local training is sharded
  over (with ``config.shard_clients`` or when the run spans several processes), else
  None."""
  if not (config.shard_clients or jax.process_count() > 1):
    return None
  mesh = distributed.client_mesh()
  if config.num_lanes % mesh.size:
    raise ValueError(f"--num_lanes={config.num_lanes} is invalid: sharding clients over "
                     f"{mesh.size} devices needs a multiple of {mesh.size}")
  return mesh


def run_split(config: TrainConfig) -> data_lib.Split:
  """The split ``config`` trains on (with ``config.validation``, one more interaction per
  user held out as ``valid_item``): ``data.load_dataset`` of its dataset flags."""
  with _naming_the_remedy_for_too_few_candidates():
    return data_lib.load_dataset(
        config.dataset,
        config.data_dir,
        seed=config.seed,
        num_valid=int(config.validation),
        num_test_negatives=config.test_negatives,
        download=config.download,
        file_options=None if config.dataset in DATASETS else config.file_options())


@contextlib.contextmanager
def _naming_the_remedy_for_too_few_candidates():
  """A ``TooFewCandidatesError`` raised inside goes on with the flags that avoid it."""
  try:
    yield
  except data_lib.TooFewCandidatesError as e:
    raise data_lib.TooFewCandidatesError(
        f"{e}: sample fewer with --test_negatives, or (experiments.train) rank every item "
        "with --eval_protocol=full --test_negatives=0") from None


def run_data_sha256(config: TrainConfig) -> str:
  """``data.split_sha256`` of ``run_split(config)``: what a run's records hold to tell
  a result of these data from one of an edited file or other test negatives."""
  return data_lib.split_sha256(run_split(config))


def load_run_data(config: TrainConfig):
  """``(split, eval_items [U], eval_negatives [U, N])`` of ``config`` (N:
  ``config.test_negatives``).

  With ``config.validation`` one more interaction per user (the latest before the
  test one) is held out of training and is what runs are scored on, against N
  negatives of their own draw: tuning never sees the test items. Otherwise runs
  are scored on the test items and their saved negatives.
  """
  if config.eval_protocol != "full" and config.test_negatives < 10:
    _log.warning(
        "--test_negatives=%d: the sampled protocol ranks each test item among %d candidates, "
        "so HR@10 is 1 for every model (HR@K for every K >= %d); rank every item with "
        "--eval_protocol=full, or sample at least 10 negatives", config.test_negatives,
        config.test_negatives + 1, config.test_negatives + 1)
  split = run_split(config)
  if not config.validation:
    return split, split.test_item, split.test_negatives
  with _naming_the_remedy_for_too_few_candidates():
    negatives = data_lib.sample_negatives(split.seen_indptr,
                                          split.seen_items,
                                          split.num_items,
                                          config.test_negatives,
                                          seed=config.seed + _VALID_NEGATIVES_SEED,
                                          name=config.dataset)
  return split, split.valid_item, negatives


def build_model(config: TrainConfig):
  """The model of ``config`` (``models.MODELS``)."""
  return model_for_run(config.model, config.dim, config.init_scale)


class Experiment(NamedTuple):
  """A run of ``config`` ready to step: ``split``, the ``[U]`` items and ``[U, N]``
  negatives (N: ``config.test_negatives``) it is scored on (test, or validation with ``config.validation``),
  ``evaluate(users, items, dense) -> {metric: value}`` and the ``Simulation``."""
  config: TrainConfig
  split: Any
  eval_items: Any
  eval_negatives: Any
  evaluate: Callable
  sim: Simulation


def build_experiment(config: TrainConfig, mesh=None) -> Experiment:
  """Data, evaluation and simulation of ``config`` (``mesh``: see ``run_mesh``)."""
  split, eval_items, eval_negatives = load_run_data(config)
  if config.clients_per_round > split.num_users:
    raise ValueError(f"--clients_per_round={config.clients_per_round} exceeds the number of "
                     f"users of {config.dataset} ({split.num_users})")
  sim = build_simulation(config, split, mesh=mesh)
  evaluate = make_evaluate(sim.model,
                           eval_items,
                           eval_negatives,
                           protocol=config.eval_protocol,
                           train_indptr=split.train_indptr,
                           train_items=split.train_items,
                           num_items=split.num_items)
  return Experiment(config=config,
                    split=split,
                    eval_items=eval_items,
                    eval_negatives=eval_negatives,
                    evaluate=evaluate,
                    sim=sim)
