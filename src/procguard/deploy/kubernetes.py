"""Kubernetes: one Deployment per worker, as JSON-compatible YAML.

The manifest is built as plain data and serialised with ``json.dumps`` (JSON
is YAML), so no name, argument or environment value can inject structure.
Inside a pod the worker's health server must listen on ``0.0.0.0`` for the
kubelet to reach it, so ``--health-host 0.0.0.0`` is set explicitly there
(and only there). Probes: liveness on ``/health`` (more tolerant), readiness
on ``/ready`` (flips first on SIGTERM, so traffic drains), a startup probe
that covers a slow start. The pod runs non-root, read-only, with no
privilege escalation; procguard's state directory and ``/tmp`` are
``emptyDir`` volumes.

A worker with ``instances = N`` is a Deployment with ``replicas: N`` (it
wins over ``[deploy.kubernetes] replicas``). Each pod is one copy with the
health port P (pods do not share a network namespace, so no P+K-1 there);
the pods of a Deployment are interchangeable and have no number, so they get
no ``PROCGUARD_INSTANCE_INDEX``.

TLS and the token never appear in a manifest: a worker with
``health_tls_cert``/``health_tls_key`` reads them from the Secret
``<project>-health-tls`` (type ``kubernetes.io/tls``: keys ``tls.crt`` and
``tls.key``) mounted at ``/etc/procguard/tls``, and its probes use ``scheme:
HTTPS``; a worker with ``health_token_file`` (or ``PROCGUARD_HEALTH_TOKEN`` in
its ``env``) reads the token from the Secret ``<project>-health-token`` (key
``token``), mounted at ``/etc/procguard/token`` (or referenced by
``secretKeyRef``).

A worker with ``[workers.X.autoscale]`` also gets an ``autoscaling/v2``
HorizontalPodAutoscaler (``<project>-<worker>-hpa.yaml``): the same rule as
``procguard up`` applies, on the pods' Prometheus gauge of the same name (a
``Pods`` metric with an average value of ``target`` per pod, so the
HorizontalPodAutoscaler's ceil(pods x average / target) is procguard's
ceil(total / target)), ``min``/``max`` replicas, and a scale-down
stabilization window of ``scale_down_after`` (scale-up at once). Its
Deployment then has no ``replicas`` (the autoscaler owns the count).
Kubernetes reads a pod's own gauge only through a custom metrics adapter
(prometheus-adapter or KEDA) that serves it from Prometheus' scrape of the
pods' /metrics; docs/PRODUCTION_DEPLOYMENT.md shows the adapter rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from ..autoscale import AutoscaleRule
from ..config import StackConfig, WorkerConfig, worker_argv
from ..errors import UsageError
from ..snapshot import label_environment
from ..units import MB
from .escape import kubernetes_env, kubernetes_word, yaml_json
from .settings import engine_limits, worker_workdir
from .writer import RenderedFile, header

DEFAULT_HEALTH_PORT = 9091
DEFAULT_RUN_AS_USER = 10001
STATE_DIR = "/var/run/procguard"
#: Where the health port's Secrets are mounted in the pod.
TLS_MOUNT = "/etc/procguard/tls"
TOKEN_MOUNT = "/etc/procguard/token"
TOKEN_ENV = "PROCGUARD_HEALTH_TOKEN"
#: Secret files readable by the pod's group (fsGroup) only.
_SECRET_MODE = 0o440


def object_name(config: StackConfig, worker: WorkerConfig) -> str:
    """A DNS-1123 name for the worker's Deployment: ``<project>-<worker>``, lowercase."""
    raw = f"{config.project.name}-{worker.name}".lower().replace("_", "-")
    name = re.sub(r"-+", "-", raw).strip("-")[:63].rstrip("-")
    return name


def label_value(name: str) -> str:
    """A project or worker name as a label value, which must end with a letter or digit.

    Names already start with one and hold only letters, digits, '-' and
    '_'; a trailing '-' or '_' is dropped (two workers that differ only
    there also share their object name, which is refused).
    """
    return name.rstrip("-_")


def _millicores(percent: float) -> str:
    return f"{math.ceil(percent * 10)}m"


def _mebibytes(size: int) -> str:
    return f"{math.ceil(size / MB)}Mi"


def secret_names(config: StackConfig) -> tuple[str, str]:
    """The Secrets a stack's pods read: ``(<project>-health-tls, <project>-health-token)``."""
    base = re.sub(r"-+", "-", config.project.name.lower().replace("_", "-")).strip("-")[:45].rstrip("-")
    return f"{base}-health-tls", f"{base}-health-token"


def _probe(
    path: str, *, period: int, timeout: int, failures: int, initial: int = 0, https: bool = False
) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path, "port": "health"}
    if https:
        get["scheme"] = "HTTPS"  # the kubelet does not verify the certificate; it needs no CA
    probe: dict[str, Any] = {
        "httpGet": get,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def deployment(
    config: StackConfig, worker: WorkerConfig, settings: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The Deployment of one worker, as plain data (pure)."""
    own: Mapping[str, Any] = settings.get("kubernetes", {})
    image = own.get("image")
    if not image:
        msg = "kubernetes needs a container image (use --image IMG or image = ... in [deploy.kubernetes])"
        raise UsageError(msg)
    limits = engine_limits(worker, settings)
    name = object_name(config, worker)
    tls_secret, token_secret = secret_names(config)
    https = worker.limits.health_tls_cert is not None
    token_in_file = worker.limits.health_token_file is not None
    mounted: dict[str, Any] = {}
    if https:
        mounted.update(health_tls_cert=f"{TLS_MOUNT}/tls.crt", health_tls_key=f"{TLS_MOUNT}/tls.key")
    if token_in_file:
        mounted["health_token_file"] = f"{TOKEN_MOUNT}/token"
    if mounted:  # the files come from the Secrets, at their mount paths
        worker = dataclasses.replace(worker, limits=worker.limits.with_changes(**mounted))
    port = worker.limits.health_port or int(own.get("health_port", DEFAULT_HEALTH_PORT))
    procguard = list(own.get("procguard", ("procguard",)))
    argv = worker_argv(worker, procguard=procguard, name=worker.name, health_host="0.0.0.0")
    if not worker.limits.health_port:
        # The renderer assigns the pod's health port; replace the disabled one.
        index = argv.index("--health-port")
        argv[index + 1 : index + 2] = [str(port), "--health-host", "0.0.0.0"]
    what = f"workers.{worker.name}"
    argv = [kubernetes_word(word, what + ".command") for word in argv]
    labels = {
        "app.kubernetes.io/name": label_value(config.project.name),
        "app.kubernetes.io/component": label_value(worker.name),
        "app.kubernetes.io/managed-by": "procguard",
    }
    env: list[dict[str, Any]] = [
        {"name": "PROCGUARD_STATE_DIR", "value": STATE_DIR}, {"name": "PYTHONUNBUFFERED", "value": "1"}
    ]
    label_env = label_environment(config.project.name, worker.name)
    env += [{"name": key, "value": value} for key, value in label_env.items()]
    env += [
        kubernetes_env(key, value, what)
        for key, value in worker.env.items()
        if key not in ("PROCGUARD_STATE_DIR", TOKEN_ENV)
    ]
    if TOKEN_ENV in worker.env and not token_in_file:  # referenced, never inlined
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}}})

    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    if limits.kubernetes_memory_request is not None:
        resources["requests"]["memory"] = _mebibytes(limits.kubernetes_memory_request)
    if limits.kubernetes_memory_limit is not None:
        resources["limits"]["memory"] = _mebibytes(limits.kubernetes_memory_limit)
    cpu_limit = own.get("cpu_limit")
    if cpu_limit is None and worker.limits.cpu_limit_percent is not None:
        cpu_limit = worker.limits.cpu_limit_percent * 1.25
    cpu_request = own.get("cpu_request", min(10.0, cpu_limit) if cpu_limit else 10.0)
    resources["requests"]["cpu"] = _millicores(cpu_request)
    if cpu_limit:
        resources["limits"]["cpu"] = _millicores(cpu_limit)
    resources = {key: value for key, value in resources.items() if value}

    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": argv,
        "env": env,
        "ports": [{"name": "health", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": _probe("/health", period=2, timeout=3, failures=30, https=https),
        "livenessProbe": _probe("/health", period=10, timeout=5, failures=6, https=https),
        "readinessProbe": _probe("/ready", period=5, timeout=2, failures=2, https=https),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "procguard-state", "mountPath": STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    extra = list(own.get("read_write_paths", ()))
    for index, path in enumerate(extra):
        # The root file system is read-only; these stay writable (replace the
        # emptyDir with a PersistentVolumeClaim for data that must survive a pod).
        container["volumeMounts"].append({"name": f"data-{index}", "mountPath": path})
    secret_volumes = []
    if https:
        secret_volumes.append({"name": "health-tls", "secret": {"secretName": tls_secret,
                                                              "defaultMode": _SECRET_MODE}})
        container["volumeMounts"].append({"name": "health-tls", "mountPath": TLS_MOUNT, "readOnly": True})
    if token_in_file:
        secret_volumes.append({"name": "health-token", "secret": {"secretName": token_secret,
                                                                "defaultMode": _SECRET_MODE}})
        container["volumeMounts"].append({"name": "health-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
    workdir = own.get("workdir")
    if workdir:
        container["workingDir"] = worker_workdir(worker, workdir)
    elif worker.cwd and worker.cwd.startswith("/"):
        container["workingDir"] = worker.cwd
    for key in ("user", "group", "umask"):
        if getattr(worker, key) is not None:
            msg = (
                f"workers.{worker.name}.{key}: a Kubernetes pod runs as a numeric uid set for the whole"
                " stack ([deploy.kubernetes] run_as_user), not per worker: remove it to deploy to Kubernetes"
            )
            raise UsageError(msg)
    uid = int(own.get("run_as_user", DEFAULT_RUN_AS_USER))
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": limits.kubernetes_termination_s,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "procguard-state", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            *({"name": f"data-{index}", "emptyDir": {}} for index in range(len(extra))),
            *secret_volumes,
        ],
    }
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if own.get("namespace"):
        metadata["namespace"] = own["namespace"]
    replicas: dict[str, int] = {}
    if worker.autoscale is None:  # else the HorizontalPodAutoscaler owns the count
        replicas["replicas"] = worker.instances if worker.instances > 1 else int(own.get("replicas", 1))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **replicas,
            # One instance per name, also during a rollout: the old pod stops first.
            "strategy": {"type": "Recreate"},
            "selector": {
                "matchLabels": {
                    k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")
                }
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                        **({"prometheus.io/scheme": "https"} if https else {}),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def quantity(value: float) -> str:
    """A Kubernetes quantity for ``value``: ``100``, or ``2500m`` for 2.5."""
    if value == int(value):
        return str(int(value))
    return f"{math.ceil(value * 1000)}m"


def autoscaler(
    config: StackConfig, worker: WorkerConfig, rule: AutoscaleRule, namespace: str | None
) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of an autoscaled worker's Deployment, as plain data (pure)."""
    name = object_name(config, worker)
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": label_value(config.project.name),
            "app.kubernetes.io/component": label_value(worker.name),
            "app.kubernetes.io/managed-by": "procguard",
        },
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": rule.min,
            "maxReplicas": rule.max,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": rule.metric},
                        "target": {"type": "AverageValue", "averageValue": quantity(rule.target)},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": math.ceil(rule.scale_down_after_s)},
            },
        },
    }


def render_kubernetes(config: StackConfig, settings: Mapping[str, Mapping[str, Any]]) -> list[RenderedFile]:
    """One ``<project>-<worker>.yaml`` Deployment per worker (pure)."""
    files: list[RenderedFile] = []
    seen: dict[str, str] = {}
    for worker in config.workers.values():
        name = object_name(config, worker)
        if name in seen:
            msg = (
                f"workers {seen[name]!r} and {worker.name!r} map to the same Kubernetes name {name!r}"
                " (rename one: Kubernetes names are lowercase with '-')"
            )
            raise UsageError(msg)
        seen[name] = worker.name
        body = yaml_json(deployment(config, worker, settings))
        text = f"# {header(config.path.name)}\n{body}\n"
        files.append(RenderedFile(f"{name}.yaml", text))
        if worker.autoscale is not None:
            namespace = settings.get("kubernetes", {}).get("namespace")
            body = yaml_json(autoscaler(config, worker, worker.autoscale, namespace))
            files.append(RenderedFile(f"{name}-hpa.yaml", f"# {header(config.path.name)}\n{body}\n"))
    return files
