"""vLLM's HTTP API, owned in one place: `contract` (pure: paths, auth, replies → facts and errors)
and `client` (a blocking standard-library transport over it). The router speaks the same contract
over its own asyncio connections. Nothing else in fleetspec spells an engine path or header.
"""
