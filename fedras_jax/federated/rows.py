"""Row gathers and scatters that stay fast under ``vmap`` (a sweep's run axis).

Local training reads and writes rows of its tables by index every SGD step.
``jax.vmap`` of ``table[idx]`` / ``table.at[idx].add(v)`` with a batched table
becomes a gather/scatter with batch dimensions, which XLA:CPU runs an order of
magnitude slower than the unbatched op (docs/design/round.md).
These functions carry a ``custom_vmap`` rule that folds the batch axis into the row
axis instead (``[P, N, ...] -> [P * N, ...]``, indices offset by ``p * N``), so a
batch of ``P`` tables costs one plain gather/scatter of ``P`` times the rows.

Semantics (with or without ``vmap``): ``take_rows`` clamps indices into
``[0, N)``; ``add_rows`` and ``set_rows`` drop updates whose index is outside
``[0, N)`` (``mode="drop"``).
"""
import jax
import jax.numpy as jnp


def _batch(x, batched, size):
  return x if batched else jnp.broadcast_to(x, (size,) + x.shape)


def _fold_index(idx, size, rows):
  """Indices into ``[size * rows]`` of the flattened batch; out of range stays out."""
  offset = (jnp.arange(size) * rows).reshape((size,) + (1,) * (idx.ndim - 1))
  inside = (idx >= 0) & (idx < rows)
  return jnp.where(inside, idx + offset, size * rows)


@jax.custom_batching.custom_vmap
def take_rows(table, idx):
  """``table [N, ...]``, ``idx int [...]`` -> ``table[clip(idx, 0, N - 1)]``."""
  return table[jnp.clip(idx, 0, table.shape[0] - 1)]


@take_rows.def_vmap
def _take_rows_vmap(size, in_batched, table, idx):
  table_b, idx_b = in_batched
  if not table_b:  # one table, many index sets: a plain gather already
    return take_rows(table, idx), idx_b
  idx = _batch(idx, idx_b, size)
  rows = table.shape[1]
  flat = table.reshape((size * rows,) + table.shape[2:])
  return take_rows(flat, _fold_index(jnp.clip(idx, 0, rows - 1), size, rows)), True


def _scatter(op):
  """A ``custom_vmap`` row scatter ``(table [N, ...], idx [k], values [k, ...])``."""

  @jax.custom_batching.custom_vmap
  def scatter(table, idx, values):
    rows = table.shape[0]
    idx = jnp.where((idx >= 0) & (idx < rows), idx, rows)  # no wrap-around of negatives
    return getattr(table.at[idx], op)(values, mode="drop")

  @scatter.def_vmap
  def _rule(size, in_batched, table, idx, values):
    table, idx, values = (_batch(x, b, size) for x, b in zip((table, idx, values), in_batched))
    rows = table.shape[1]
    flat = table.reshape((size * rows,) + table.shape[2:])
    out = scatter(flat,
                  _fold_index(idx, size, rows).reshape(-1),
                  values.reshape((-1,) + values.shape[2:]))
    return out.reshape(table.shape), True

  return scatter


add_rows = _scatter("add")
add_rows.__doc__ = """``table.at[idx].add(values, mode="drop")`` for ``idx [k]``, ``values [k, ...]``."""
set_rows = _scatter("set")
set_rows.__doc__ = """``table.at[idx].set(values, mode="drop")`` for ``idx [k]``, ``values [k, ...]``
(duplicate in-range indices: one of the values wins, as in ``.at[].set``)."""
