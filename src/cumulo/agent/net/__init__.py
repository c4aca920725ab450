"""The host agent's data plane: namespace, bridges, dnsmasq, nftables, tc, VXLAN.

Everything lives inside ONE network namespace per cumulo host (see `names.netns_name`); the
root namespace never gets an address or a route of a VM network. `HostNetwork` (host_network.py)
is the only entry point the agent uses.
"""
