"""The deployment files stay consistent with the code: ports, settings, health checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from toolsim_toolactor import ActorSettings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_wires_vllm_redis_and_toolactor_with_health_gates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    for key, value in actor["environment"].items():  # read as the process reads them
        monkeypatch.setenv(key, str(value))
    settings = ActorSettings()
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


COMPOSE_ONLY = {"TOOLSIM_SEARCH_CORPUS", "TOOLSIM_LIVE_TOOLS"}
"""The ToolActor's live search over the data sets of compose's train profile (k8s mounts none)."""


def _k8s_containers() -> dict[str, dict[str, Any]]:
    docs = [
        d
        for f in sorted((ROOT / "k8s").glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
    ]
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def test_compose_and_k8s_run_the_same_images_with_the_same_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    k8s = _k8s_containers()
    pairs = {
        "toolactor": "toolactor",
        "toolmaker": "toolmaker",
        "model": "toolsim-model-fetch",
        "redis": "redis",
    }
    for service, workload in pairs.items():
        assert services[service]["image"] == k8s[workload]["image"], service
    config = yaml.safe_load((ROOT / "k8s" / "config.yaml").read_text().split("---")[0])
    for name in ("toolactor", "toolmaker"):
        env = services[name]["environment"]
        shared = {k: str(v) for k, v in env.items() if k not in COMPOSE_ONLY}
        assert shared == config["data"], f"{name}: compose env != k8s ConfigMap"
    assert services["redis"]["command"][1:] == k8s["redis"]["args"]
    assert services["model"]["command"] == k8s["toolsim-model-fetch"]["command"]
    gpu_text = (ROOT / "docker-compose.gpu.yml").read_text().replace("!reset ", "")
    gpu = yaml.safe_load(gpu_text)["services"]["vllm"]  # (!reset: Compose's own YAML tag)
    assert gpu["image"] == k8s["vllm"]["image"]
    model_args = [
        a
        for a in services["vllm"]["command"]
        if a.split("=")[0] in {"--model", "--served-model-name", "--max-model-len"}
    ]
    assert model_args == k8s["vllm"]["args"] == gpu["command"]


def test_compose_builds_every_image_from_one_dockerfile_with_cmd_shell_healthchecks() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "docker/Dockerfile").read_text(), re.M))
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "docker/Dockerfile", name
            assert service["build"]["target"] in stages, name
        if "healthcheck" in service:
            # podman's Docker API splits exec-form arguments at spaces; CMD-SHELL works on both
            assert service["healthcheck"]["test"][0] == "CMD-SHELL", name
    assert services["trainer"]["profiles"] == ["train"]
    assert "--enforce-eager" in services["vllm"]["command"] and services["vllm"]["shm_size"]


def test_train_profile_runs_the_demo_against_the_compose_toolactor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolsim_trainer.pipeline import Pipeline, PipelineConfig

    trainer = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["trainer"]
    command = trainer["command"]
    config = next(a.split("=", 1)[1] for a in command if a.startswith("--config="))
    sets = [a.split("=", 1)[1] for a in command if a.startswith("--set=")]
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository root
    cfg = PipelineConfig.from_yaml(config, [*sets, f"output_dir={tmp_path}"])
    with Pipeline(cfg).toolactor({}) as url:  # no process is started for a given URL
        assert url == "http://toolactor:8001"
    with pytest.raises(ValueError, match="actor_env"):
        PipelineConfig.from_yaml(config, [*sets, "actor_env.TOOLSIM_SEED=1"])


def test_only_the_observation_cache_may_be_evicted() -> None:
    """Toolsets and episodes live on a Redis that never evicts; the cache's Redis is capped and
    LRU; the ToolActor is pointed at each."""
    k8s = _k8s_containers()
    registry, cache = k8s["redis"]["args"], k8s["redis-cache"]["args"]
    assert registry[registry.index("--maxmemory-policy") + 1] == "noeviction"
    assert registry[registry.index("--appendonly") + 1] == "yes"
    assert cache[cache.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in cache
    config = yaml.safe_load((ROOT / "k8s" / "config.yaml").read_text().split("---")[0])
    env = {e["name"]: e["value"] for e in k8s["toolactor"]["env"]}
    settings = ActorSettings(
        redis_url=config["data"]["TOOLSIM_REDIS_URL"],
        cache_redis_url=env["TOOLSIM_CACHE_REDIS_URL"],
    )
    assert settings.cache_redis_url == "redis://redis-cache:6379/0" != settings.redis_url
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    command = compose["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
