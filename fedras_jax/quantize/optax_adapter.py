"""Optax adapter: quantize chosen 2-D update leaves through encode -> decode.

``actions_quantizer(...)`` is an ``optax.GradientTransformation`` that replaces
every selected leaf ``U`` ``[n, d]`` of the incoming updates by
``decode(encode(U, ...))`` and passes all other leaves through unchanged
(bit-identical). Compose it with ``optax.chain``, e.g.::

    tx = optax.chain(actions_quantizer(payload_ratio=0.1, max_k=16), optax.sgd(0.1))

(quantize the raw gradient, then apply SGD), or after the optimizer to
quantize the final updates. All-zero rows (untouched embedding rows) carry the
reserved code and stay exactly zero.

The state carries a PRNG key (split every step, folded per leaf), the total
payload bits of the last update, for logging, and how many rows of it held a NaN or
inf: such a row is sent as no update (zero), so a diverging run would otherwise look
healthy; check ``state.num_nonfinite``.

The default ``leaf_filter`` quantizes every 2-D floating leaf. To quantize only an
item table, as a federated recommender sends, select it by its path::

    def item_table_only(path, leaf):
      return jax.tree_util.keystr(path) == "['item_emb']"

    tx = optax.chain(actions_quantizer(payload_ratio=1 / 32, leaf_filter=item_table_only),
                     optax.sgd(0.1))

Under ``optax.inject_hyperparams`` (to schedule ``payload_ratio``,
``budget_bits`` or ``tau``) name the other arguments static: they set shapes, or
are callables optax would take for schedules::

    optax.inject_hyperparams(actions_quantizer,
                             static_args=("leaf_filter", "max_k", "tau_mode", "value_bits",
                                          "max_iters", "max_splits"))(payload_ratio=0.1)
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fedras_jax.quantize.actions import decode, encode


class ActionsQuantizerState(NamedTuple):
  """State of :func:`actions_quantizer`.

  Attributes:
    key: ``uint32[2]`` PRNG key, advanced every update.
    bits: ``[]`` int32, total payload bits of the quantized leaves in the
      last update (0 after init).
    num_nonfinite: ``[]`` int32, rows of the quantized leaves in the last update
      holding a NaN or inf (each sent as no update; 0 after init).
  """

  key: jax.Array
  bits: jax.Array
  num_nonfinite: jax.Array


def default_leaf_filter(path, leaf) -> bool:
  """Quantize every 2-D floating leaf (e.g. embedding tables)."""
  del path
  return getattr(leaf, "ndim", 0) == 2 and jnp.issubdtype(leaf.dtype, jnp.floating)


def _ratio_budget(payload_ratio, dense_bits: int):
  """``floor(payload_ratio * dense_bits)``: a Python int for a Python number, else a
  float32 array (``encode`` takes it to int32)."""
  if isinstance(payload_ratio, (int, float)):
    return int(payload_ratio * dense_bits)
  return jnp.floor(jnp.asarray(payload_ratio, jnp.float32) * dense_bits)


def actions_quantizer(budget_bits: Optional[int] = None,
                      *,
                      payload_ratio: Optional[float] = None,
                      max_k: int = 16,
                      tau=0.7,
                      tau_mode: str = "fixed",
                      leaf_filter: Callable[[Any, Any], bool] = default_leaf_filter,
                      value_bits: int = 32,
                      max_iters: int = 25,
                      seed: int = 0,
                      max_splits: Optional[int] = None,
                     ) -> optax.GradientTransformation:
  """Quantize the updates of selected 2-D leaves as actions.

  Args:
    budget_bits: bits per selected leaf and step (int, or traced value
      captured in a closure). Exactly one of ``budget_bits`` and
      ``payload_ratio`` must be given.
    payload_ratio: budget as a fraction of the dense float32 size of each
      leaf: ``floor(payload_ratio * n * d * 32)`` bits per leaf (a Python float,
      exact; or traced, e.g. a schedule under ``optax.inject_hyperparams``, in
      float32).
    max_k: static number of action slots per leaf.
    tau, tau_mode: split threshold, see :func:`encode`.
    leaf_filter: ``(path, leaf) -> bool``; True = quantize this leaf. It is
      called on the *updates* tree at trace time; must select 2-D leaves.
    value_bits, max_iters: forwarded to :func:`encode`.
    seed: seed of the PRNG key in the state.
    max_splits: clusters split per split test, forwarded to :func:`encode`
      (``None``: every incoherent cluster at once; ``1``: one per test).

  Returns:
    ``optax.GradientTransformation``.
  """
  if (budget_bits is None) == (payload_ratio is None):
    raise ValueError("give exactly one of budget_bits and payload_ratio")

  def init_fn(params):
    del params
    return ActionsQuantizerState(key=jax.random.PRNGKey(seed),
                                 bits=jnp.int32(0),
                                 num_nonfinite=jnp.int32(0))

  def update_fn(updates, state, params=None):
    del params
    key, step_key = jax.random.split(state.key)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    out = []
    total = jnp.int32(0)
    nonfinite = jnp.int32(0)
    for i, (path, u) in enumerate(leaves):
      if not leaf_filter(path, u):
        out.append(u)
        continue
      if u.ndim != 2:
        raise ValueError(f"leaf_filter selected {jax.tree_util.keystr(path)} with shape {u.shape}; "
                         "only 2-D leaves can be quantized")
      n, d = u.shape
      budget = budget_bits if payload_ratio is None else _ratio_budget(payload_ratio, n * d * 32)
      payload = encode(u,
                       jax.random.fold_in(step_key, i),
                       budget_bits=budget,
                       max_k=max_k,
                       tau=tau,
                       tau_mode=tau_mode,
                       value_bits=value_bits,
                       max_iters=max_iters,
                       max_splits=max_splits,
                      )
      out.append(decode(payload).astype(u.dtype))
      total = total + payload.bits
      nonfinite = nonfinite + payload.num_nonfinite
    new_updates = jax.tree_util.tree_unflatten(treedef, out)
    return new_updates, ActionsQuantizerState(key=key, bits=total, num_nonfinite=nonfinite)

  return optax.GradientTransformation(init_fn, update_fn)
