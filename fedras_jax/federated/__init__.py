"""The federated simulator: client data, local training, aggregation, the round."""
from fedras_jax.federated.aggregation import AGGREGATIONS, aggregate_item_updates
from fedras_jax.federated.client_data import (TRAIN_NEGATIVES, ClientData, client_data_from_csr,
                                              client_data_from_split, negative_exclusions)
from fedras_jax.federated.local_data import ClientPlan, client_plan, minibatch, slot_item, unseen_item
from fedras_jax.federated.local_training import (ClientOutput, LocalHParams, client_update,
                                                 local_step, packed_client_updates, slot_layout)
from fedras_jax.federated.capacity import Capacity, client_buckets, plan_capacity
from fedras_jax.federated.round import (ClientPlans, RoundParts, RoundStages, capacity_overflow,
                                        make_round, make_round_stages, plan_clients, relative_error,
                                        train_clients)
from fedras_jax.federated.state import (ClientStates, RoundConfig, RoundHParams, RoundMetrics,
                                        ServerState, client_keys, init_states, round_basis_key,
                                        round_clients, round_key, sample_clients)
