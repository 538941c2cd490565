"""Routing: pure code that decides which endpoint serves a request.

Nothing here does I/O or reads the wall clock: callers pass ``now``. The same objects run inside
the live gateway and inside the discrete-event cluster simulator.
"""

from sluice.routing.endpoint import Endpoint, EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, NoEndpointError, Policy, make_policy, register_policy

__all__ = [
    "Decision",
    "Endpoint",
    "EndpointState",
    "NoEndpointError",
    "Policy",
    "RequestFacts",
    "make_policy",
    "register_policy",
]
