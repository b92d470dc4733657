"""Virtual-time worlds: the memory and fault-injecting networks, the seeded
fuzz harness and its invariants, and the scenario simulator behind
``powergrid simulate`` (scenarios, the runner, reports and plots).

Nothing here touches a socket or a real clock; every run replays bit for bit
from its seed.
"""
