"""The request lifecycle shared by runner hosts, coordinators, the gateway and the client: running
one request on a runner (`session`: coalescing, deadline, exactly one final event, its metrics and
log line), chunk coalescing, and assembling a caller's stream from events that may arrive out of
order (`stream_assembly`).

May import: `atomr.core`, `atomr.runners` (the runtime catalog), `atomr.observability`. Never
Thespian, actors or the HTTP front.
"""
