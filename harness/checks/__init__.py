"""What netharness judges: the suites (multiplexing, five-tuple, ports), reachability
probes against the topology's expectations, their reports and graphs. Built on `Lab`.
"""
