"""What the backends and the lab both stand on: network namespaces and netlink, the names
a lab gives its objects, the ledger that records them, the controller's side of the host
agent protocol, the event loop, ssh settings and the host image. Imports nothing above it.
"""
