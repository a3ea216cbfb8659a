"""The agent's HTTP endpoints, for the kubelet's probes, Prometheus, the router and people.

GET /healthz  200 while the loop runs (liveness: a stuck loop gets the container restarted)
GET /ready    200 when the base model and the last good adapter set serve (readiness), else 503
GET /status   the whole picture as JSON: revision read, last good set (required `adapters` and
              `on_demand`), what serves (`serving`, and of it `serving_on_demand`), the problem
GET /metrics  Prometheus text: readiness, whether the ConfigMap's content is applied, counters
"""

from __future__ import annotations

import http.server
import json
import threading

from fleetspec.agent import reconciler

STUCK_AFTER_S = 600.0  # longer than a load's timeout and the restore after it


def metrics_text(agent: reconciler.Agent) -> str:
    status = agent.status()
    counters = status["counters"]
    problem = status["problem"]
    lines = [
        "# HELP fleetspec_agent_ready 1 when the base model and the last good adapter set serve.",
        "# TYPE fleetspec_agent_ready gauge",
        f"fleetspec_agent_ready {int(status['ready'])}",
        "# HELP fleetspec_agent_config_applied 1 when the mounted adapter set is the one served; 0 while it is refused.",
        "# TYPE fleetspec_agent_config_applied gauge",
        f"fleetspec_agent_config_applied {int(problem is None and status['last_good'] is not None)}",
        "# HELP fleetspec_agent_engine_healthy 1 when the engine answers /health.",
        "# TYPE fleetspec_agent_engine_healthy gauge",
        f"fleetspec_agent_engine_healthy {int(status['engine']['healthy'])}",
        "# HELP fleetspec_agent_adapters_serving Adapters the engine serves.",
        "# TYPE fleetspec_agent_adapters_serving gauge",
        f"fleetspec_agent_adapters_serving {len(status['serving'] or {})}",
        "# HELP fleetspec_agent_adapters_serving_on_demand Of those, adapters the set allows on demand (router-loaded).",
        "# TYPE fleetspec_agent_adapters_serving_on_demand gauge",
        f"fleetspec_agent_adapters_serving_on_demand {len(status['serving_on_demand'] or {})}",
        "# HELP fleetspec_agent_last_good_timestamp_seconds When the last good adapter set was first served.",
        "# TYPE fleetspec_agent_last_good_timestamp_seconds gauge",
        f"fleetspec_agent_last_good_timestamp_seconds {(status['last_good'] or {}).get('at') or 0}",
        "# HELP fleetspec_agent_sets_applied_total Adapter sets served.",
        "# TYPE fleetspec_agent_sets_applied_total counter",
        f"fleetspec_agent_sets_applied_total {counters['applied']}",
        "# HELP fleetspec_agent_sets_rejected_total Adapter sets refused, by why.",
        "# TYPE fleetspec_agent_sets_rejected_total counter",
        f'fleetspec_agent_sets_rejected_total{{reason="invalid"}} {counters["rejected_invalid"]}',
        f'fleetspec_agent_sets_rejected_total{{reason="unloadable"}} {counters["rejected_unloadable"]}',
        "# HELP fleetspec_agent_restores_total Times the engine was brought back to the last good set.",
        "# TYPE fleetspec_agent_restores_total counter",
        f"fleetspec_agent_restores_total {counters['restored']}",
    ]
    return "\n".join(lines) + "\n"


def serve(agent: reconciler.Agent, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; returns the server (its `server_address` has the port)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = agent.alive(STUCK_AFTER_S)
                self._send(
                    200 if alive else 503, "text/plain", "ok\n" if alive else "the agent's loop is stuck\n"
                )
            elif path == "/ready":
                ready, reason = agent.readiness()
                self._send(
                    200 if ready else 503, "application/json", json.dumps({"ready": ready, "reason": reason})
                )
            elif path == "/status":
                self._send(200, "application/json", json.dumps(agent.status(), indent=2, sort_keys=True))
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", metrics_text(agent))
            else:
                self._send(
                    404, "text/plain", "not found: the agent serves /healthz, /ready, /status and /metrics\n"
                )

        def _send(self, status: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args) -> None:  # noqa: A002 - probes every few seconds would flood the log
            return

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="agent-endpoints", daemon=True).start()
    return server
