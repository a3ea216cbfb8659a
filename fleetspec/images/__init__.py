"""Offline-built container images for the sim engine and the tests (`python -m fleetspec.images build`)."""
