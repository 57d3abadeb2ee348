"""Server-side aggregation of item-row updates: inverse-frequency or FedAvg."""
import jax
import jax.numpy as jnp

AGGREGATIONS = ("inverse_frequency", "fedavg")


def aggregate_item_updates(rows, items, touched, *, num_items: int, num_clients, rule: str):
  """Aggregates clients' item-row updates by item id, without a dense per-client table.

  Args:
    rows: ``[R, d]`` update rows of all clients (any layout); items: ``[R]`` item ids;
      touched: ``[R]`` bool, the row is a real update of a client that trained that
      item (padding rows are False and have no influence, even if non-finite).
    num_clients: number of sampled clients ``|S_t|`` (FedAvg divisor).
    rule: "inverse_frequency": item i's update is the sum over clients times
      ``|S_t| / |S_i|`` over the FedAvg mean, i.e. the mean over the ``|S_i|``
      clients that touched it; "fedavg": the sum divided by ``|S_t|``.
  Returns:
    ``(update [num_items, d], counts [num_items] int32)``; untouched rows are zero.
  """
  if rule not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {rule!r}; choose one of {AGGREGATIONS}")
  ids = jnp.where(touched, items, num_items)
  sums = jax.ops.segment_sum(jnp.where(touched[:, None], rows, 0.0), ids, num_segments=num_items)
  counts = jax.ops.segment_sum(touched.astype(jnp.int32), ids, num_segments=num_items)
  if rule == "inverse_frequency":
    divisor = jnp.maximum(counts, 1).astype(rows.dtype)
  else:
    divisor = jnp.asarray(num_clients, rows.dtype)
  return sums / jnp.broadcast_to(divisor, counts.shape)[:, None], counts
