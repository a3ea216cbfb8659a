"""Routing, pure and shared: the routing table (`table`, with `matchers`, `splits` and the lazily
loaded `embedding` tier), the routing checks, and the router's config document (`config`,
"fleetspec-router/1"). Compile writes the document, `fleetspec route` and the router server
(`fleetspec.router`) read it and build the very same table from it.
"""
