"""Routing: pure code that decides which endpoint serves a request.

Nothing here does I/O or reads the wall clock: callers pass ``now``. The same objects run inside
the live gateway and inside the discrete-event cluster simulator.

Importing this package registers every policy by name (``make_policy("affinity_cost")``, ...).
See docs/routing.md.
"""

from sluice.routing.cost_model import AffinityCost, CostModel
from sluice.routing.endpoint import Endpoint, EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, NoEndpointError, Policy, make_policy, register_policy
from sluice.routing.prefix_affinity import PrefixAffinity
from sluice.routing.prefix_index import PrefixIndex
from sluice.routing.weighted import WeightedScorers

__all__ = [
    "AffinityCost",
    "CostModel",
    "Decision",
    "Endpoint",
    "EndpointState",
    "NoEndpointError",
    "Policy",
    "PrefixAffinity",
    "PrefixIndex",
    "RequestFacts",
    "WeightedScorers",
    "make_policy",
    "register_policy",
]
