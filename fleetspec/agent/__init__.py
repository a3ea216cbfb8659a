"""`fleetspec agent`: the sidecar in each engine pod that serves its server's adapter set from a ConfigMap."""
