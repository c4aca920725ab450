"""Counters the services bump, per process, for the API's /metrics (cumulo.api.metrics).

Created outside prometheus_client's global registry: each API application registers them in
its own registry (tests build many applications in one process)."""

from __future__ import annotations

from prometheus_client import Counter

IMAGE_BYTES = Counter(
    "cumulo_image_transfer_bytes", "Bytes of images received (uploads and URL downloads)",
    ["direction"], registry=None)
IMAGE_BYTES_IN = IMAGE_BYTES.labels(direction="in")

HOST_BEATS = Counter(
    "cumulo_host_beats", "Hosts' UDP heartbeats (cumulo.beats): counted, or dropped (malformed, "
    "forged, replayed, of a host not answered here lately)", ["outcome"], registry=None)
HOST_BEATS_COUNTED = HOST_BEATS.labels(outcome="counted")
HOST_BEATS_DROPPED = HOST_BEATS.labels(outcome="dropped")

ALL = (IMAGE_BYTES, HOST_BEATS)
