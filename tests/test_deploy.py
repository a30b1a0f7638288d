"""The deployment files stay consistent with the code: ports, settings, health checks."""

from __future__ import annotations

from pathlib import Path

import yaml

from toolsim_toolactor import ActorSettings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_wires_vllm_redis_and_toolactor_with_health_gates() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"vllm", "redis", "toolactor", "toolmaker", "model"} <= set(services)
    maker = services["toolmaker"]
    assert maker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (
        maker["environment"]["TOOLSIM_REDIS_URL"]
        == services["toolactor"]["environment"]["TOOLSIM_REDIS_URL"]
    )
    actor = services["toolactor"]
    assert actor["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert actor["depends_on"]["redis"]["condition"] == "service_healthy"
    settings = ActorSettings(
        **{k.removeprefix("TOOLSIM_").lower(): v for k, v in actor["environment"].items()}
    )
    assert settings.backend == "vllm" and settings.redis_url == "redis://redis:6379/0"
    assert actor["ports"] == [f"{ActorSettings().port}:{ActorSettings().port}"]
    for name in ("vllm", "redis", "toolactor", "toolmaker"):
        assert "healthcheck" in services[name], name


def test_k8s_manifests_use_settings_that_exist_and_real_probes() -> None:
    docs = [
        d
        for f in sorted((ROOT / "k8s").glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
    ]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "toolactor") in kinds and ("StatefulSet", "redis") in kinds
    assert ("Deployment", "toolmaker") in kinds
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    fields = set(ActorSettings.model_fields)
    for key in config["data"]:
        assert key.removeprefix("TOOLSIM_").lower() in fields, f"{key} is not a setting"
    actor = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "toolactor"
    )
    container = actor["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        f.name for f in (ROOT / "k8s").glob("*.yaml") if f.name != "kustomization.yaml"
    )
