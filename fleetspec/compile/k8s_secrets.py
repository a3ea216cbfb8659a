"""Credentials written literally in a fleet file, on Kubernetes: kept out of ConfigMaps and
Deployment specs.

A `${VAR}` reference is the recommended form (spec.checks warns about every literal): it becomes a
secretKeyRef to key VAR of a Secret the operator creates (`runtime.kubernetes.secret`, default
`<fleet>-secrets`). A literal admin token, a Redis URL with its password written out, or a literal
value of a credential-like env name (`HF_TOKEN: hf_abc`) cannot be left to the operator, so fleetspec
writes it into a Secret of its own, `<fleet>-inline-secrets`, and the containers read it from there:
the router's config (a ConfigMap) then holds `${FLEETSPEC_ADMIN_TOKEN}`, never the token.
"""

from __future__ import annotations

import dataclasses

from fleetspec.spec import models

# The variables the router reads the moved values from (routing.config resolves ${VAR} at start).
ADMIN_TOKEN_VAR = "FLEETSPEC_ADMIN_TOKEN"
REDIS_URL_VAR = "FLEETSPEC_REDIS_URL"


@dataclasses.dataclass(frozen=True)
class InlineSecrets:
    data: dict[str, str]  # Secret key → literal value
    router_env: dict[str, str]  # router env name → Secret key
    engine_env: dict[str, dict[str, str]]  # server → env name → Secret key
    spec: models.FleetSpec  # the fleet with every moved literal replaced by a ${VAR} reference

    def __bool__(self) -> bool:
        return bool(self.data)


def collect(spec: models.FleetSpec) -> InlineSecrets:
    data: dict[str, str] = {}
    router_env: dict[str, str] = {}
    engine_env: dict[str, dict[str, str]] = {}
    router = spec.runtime.router
    replaced: dict[str, str] = {}
    if router.admin_token and not models.SECRET_REF.search(router.admin_token):
        data["admin-token"] = router.admin_token
        router_env[ADMIN_TOKEN_VAR] = "admin-token"
        replaced["admin_token"] = f"${{{ADMIN_TOKEN_VAR}}}"
    if models.literal_redis_password(router.redis_url):
        data["redis-url"] = router.redis_url
        router_env[REDIS_URL_VAR] = "redis-url"
        replaced["redis_url"] = f"${{{REDIS_URL_VAR}}}"
    servers = []
    for server in spec.servers:
        env = dict(server.env)
        for key, value in server.env.items():
            if models.literal_secret(key, value):
                secret_key = f"{server.name}.{key}"
                data[secret_key] = value
                engine_env.setdefault(server.name, {})[key] = secret_key
                env[key] = f"${{{key}}}"  # the router's copy of the fleet names it, never holds it
        servers.append(server.model_copy(update={"env": env}) if env != server.env else server)
    stripped = spec
    if data:
        runtime = spec.runtime.model_copy(update={"router": router.model_copy(update=replaced)})
        stripped = spec.model_copy(update={"runtime": runtime, "servers": servers})
    return InlineSecrets(data, router_env, engine_env, stripped)
