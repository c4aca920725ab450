"""The edge: the public addresses of the cloud, owned by no host.

One process (`python -m cumulo.edge`, started and restarted by `cumulo up`) holds a listener
per public endpoint on the public loopback addresses of the ROOT namespace (127.100.0.N: what
users reach from the machine), and opens each flow's inner leg from a namespace of its own
plugged into the underlay like a host (cumulo.allinone.fabric), at the underlay's last
address. The root namespace never gets a route to a VM network or to the underlay.

How the inner leg reaches an instance: one /32 route per instance with a public address, in
the edge's namespace, via the underlay address of the host that runs it (routes.py); that
host's namespace routes to its bridges, and its firewall lets in from the underlay only the
edge's packets, to what the instance's security groups allow (agent/net/firewall.py).
Chosen over joining the VXLAN segments because:
- a migration changes one route, and the kernel's TCP retransmissions carry the open flows
  over to the new host: the edge keeps both sockets of a flow, nothing is re-established;
- the edge needs no MAC, ARP, DHCP or anycast-gateway handling on every project network, and
  no flood-list entries on every host; one namespace, one link, a route per address;
- it relies on what the cloud already promises: private ranges are disjoint across projects
  (services.networks), so an address names one instance cloud-wide.

The table (public address -> instance private address, its host's underlay address, its
ingress rules) comes from the API by long-poll (GET /v1/edge/table, the edge's own token),
woken by the notifier at every change of what hosts are assigned. Each answer is the whole
table: the edge converges to it (table.py plans, routes.py and proxy.py / udp.py apply), so
a restarted edge (kill -9) rebuilds everything from its first answer.

Besides TCP (proxy.py) and UDP (udp.py): a ping of a public address is answered only when
the instance answers the edge's own (echo_gate.py, pinger.py), and an authoritative DNS
answers each instance's FQDN with its public address (public_dns.py).
"""
