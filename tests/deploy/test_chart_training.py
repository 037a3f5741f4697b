"""Training in the cluster (values `training`), rendered with the real helm binary (tests/deploy/support.py): off by
default; on, a post-install hook Job (never on an upgrade) and/or a CronJob run exactly
`gridwatch train --promote-if-better` in the backend's image, on the backend's models claim and a read-only data
claim, locked down like every pod of the
chart and cut off from the network; rendering refuses what could not work (models in an emptyDir, no data), the schema
refuses bad values; and the kind walkthrough of docs/deploy.md names what the chart renders. The "training" value set
of support.VALUE_SETS also goes through test_chart.py's lint, Kubernetes-schema and lockdown tests and the checkov
scan."""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.tools.cli import build_parser
from tests.deploy.support import (
    CHART_DIR,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Rendered,
    helm,
    merged,
    pod_labels,
    pod_spec,
    pod_template,
    refusal,
    render,
    schema_refusal,
    selects,
    template_args,
    values_file,
)
from tests.monitoring.support import CHART_RECORDED, alerting_rules
from tests.support import ROOT, require_tool

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
DEPLOY_GUIDE = (ROOT / "docs" / "deploy.md").read_text()
BACKEND = f"{RELEASE}-backend"
JOB = f"{RELEASE}-train"
CRON_JOB = f"{RELEASE}-train-cron"
MODELS_CLAIM = f"{BACKEND}-models"

TRAINING = VALUE_SETS["training"]
"""Models on the chart's claim, the Job and the CronJob, data claim gridwatch-data, file feeder.csv."""

CONTRACT = ["train", "--model-dir", "/models", "--data", "/data/feeder.csv", "--promote-if-better", "--holdout", "0.2"]
"""The `gridwatch train` command line of the training pod (after the image's entrypoint, `gridwatch`)."""


def with_training(**training: Any) -> dict[str, Any]:
    """The training value set with these `training` keys replaced (one level deep for the nested blocks)."""
    merged = {**TRAINING["training"]}
    for key, value in training.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and key in merged else value
    return {**TRAINING, "training": merged}


def workloads(objects: Rendered) -> list[dict[str, Any]]:
    return [objects.get("Job", JOB), objects.get("CronJob", CRON_JOB)]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    return only


def job_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Job" else workload["spec"]["jobTemplate"]["spec"]


def mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each mount path with its mount and the volume it mounts."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
    return {m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in container(workload)["volumeMounts"]}


@pytest.fixture(scope="module")
def training(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["training"]


# --- off by default ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "models-on-pvc", "production"])
def test_nothing_trains_unless_asked(rendered: dict[str, Rendered], value_set: str):
    assert VALUES["training"]["job"]["enabled"] is False
    assert VALUES["training"]["cronJob"]["enabled"] is False
    objects = rendered[value_set]
    assert not objects.of_kind("Job")
    assert not objects.of_kind("CronJob")
    assert JOB not in objects.names("NetworkPolicy")
    components = {obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") for obj in objects.objects}
    assert "training" not in components


def test_each_switch_renders_its_own_object(chart: Path):
    job_only = render(chart, with_training(cronJob={"enabled": False}))
    assert job_only.names("Job") == {JOB}
    assert not job_only.of_kind("CronJob")
    cron_only = render(chart, with_training(job={"enabled": False}))
    assert cron_only.names("CronJob") == {CRON_JOB}
    assert not cron_only.of_kind("Job")
    assert JOB in cron_only.names("NetworkPolicy"), "the CronJob's pods are isolated too"


# --- the command: the CLI contract ------------------------------------------------------------------------------


def test_both_run_the_cli_contract_in_the_backends_image(training: Rendered):
    backend = container(training.get("Deployment", BACKEND))
    config = training.get("ConfigMap", BACKEND)["data"]
    for workload in workloads(training):
        train = container(workload)
        assert train["name"] == "train", "podFailurePolicy names this container"
        assert "command" not in train, "the image's entrypoint is `gridwatch` (tests/deploy/test_docker.py)"
        assert train["args"] == CONTRACT
        assert train["image"] == backend["image"]
        assert train["imagePullPolicy"] == backend["imagePullPolicy"]
        env = {e["name"]: e["value"] for e in train["env"]}
        assert env == {
            "MODEL_DIR": config["MODEL_DIR"],
            "MODEL_NAME": config["MODEL_NAME"],
            "MODEL_KEEP_VERSIONS": str(config["MODEL_KEEP_VERSIONS"]),
        }, "one model store, pruned after each training as the backend's settings say"
        assert "envFrom" not in train, "the serving settings are none of its business"


def test_options_become_arguments_in_order(chart: Path):
    values = with_training(
        holdout=0.3, dropInvalid=True, contamination=0.004, extraArgs=["--json", "--n-estimators", "300"]
    )
    values["training"]["data"] = {**values["training"]["data"], "file": "2026/feeder-august.parquet"}
    args = container(render(chart, values).get("Job", JOB))["args"]
    assert args == [
        "train",
        "--model-dir",
        "/models",
        "--data",
        "/data/2026/feeder-august.parquet",
        "--promote-if-better",
        "--holdout",
        "0.3",
        "--drop-invalid",
        "--contamination",
        "0.004",
        "--json",
        "--n-estimators",
        "300",
    ]


def test_numbers_given_with_set_reach_the_cli_unchanged(chart: Path):
    """`--set` passes 0.3 as the text "0.3" (helm parses only whole numbers): accepted, and rendered the same."""
    extra = ["--set", "training.holdout=0.3", "--set", "training.contamination=0.05"]
    args = container(render(chart, TRAINING, extra=extra).get("Job", JOB))["args"]
    assert args[args.index("--holdout") + 1] == "0.3"
    assert args[args.index("--contamination") + 1] == "0.05"


def test_the_rendered_arguments_parse_with_the_real_cli(chart: Path):
    values = with_training(holdout=0.25, dropInvalid=True, contamination=0.004, extraArgs=["--json"])
    args = container(render(chart, values).get("Job", JOB))["args"]
    parsed, unknown = build_parser().parse_known_args(args)
    assert unknown == []
    assert (parsed.command, parsed.model_dir, str(parsed.data)) == ("train", "/models", "/data/feeder.csv")
    assert parsed.promote_if_better is True
    assert parsed.promote is False
    assert (parsed.holdout, parsed.drop_invalid, parsed.contamination, parsed.json) == (0.25, True, 0.004, True)


# --- volumes ----------------------------------------------------------------------------------------------------


def test_both_mount_the_backends_models_claim_and_the_data_claim_read_only(training: Rendered):
    backend = mounts(training.get("Deployment", BACKEND))
    for workload in workloads(training):
        mounted = mounts(workload)
        assert set(mounted) == {"/models", "/data", "/tmp"}
        models = mounted["/models"]
        assert models["volume"]["persistentVolumeClaim"] == {"claimName": MODELS_CLAIM}
        assert models["volume"] == {**backend["/models"]["volume"], "name": models["name"]}, "the backend's claim"
        assert not models.get("readOnly"), "it writes the new version and the pointer"
        data = mounted["/data"]
        assert data["volume"]["persistentVolumeClaim"] == {"claimName": "gridwatch-data", "readOnly": True}
        assert data["readOnly"] is True
        assert "subPath" not in data
        assert mounted["/tmp"]["volume"]["emptyDir"] == {"sizeLimit": VALUES["training"]["tmpSizeLimit"]}
    assert training.get("PersistentVolumeClaim", MODELS_CLAIM), "the chart's models claim"


def test_the_mounts_follow_an_existing_claim_a_model_dir_and_a_sub_path(chart: Path):
    values = with_training(data={"subPath": "feeders/north"})
    values["backend"] = {
        "modelStorage": {"persistence": {"enabled": True, "existingClaim": "ops-models"}},
        "config": {"MODEL_DIR": "/var/lib/gridwatch"},
    }
    objects = render(chart, values)
    assert not objects.of_kind("PersistentVolumeClaim"), "the user's claim, not the chart's"
    backend = mounts(objects.get("Deployment", BACKEND))
    for workload in workloads(objects):
        mounted = mounts(workload)
        assert mounted["/var/lib/gridwatch"]["volume"]["persistentVolumeClaim"] == {"claimName": "ops-models"}
        assert backend["/var/lib/gridwatch"]["volume"]["persistentVolumeClaim"] == {"claimName": "ops-models"}
        assert mounted["/data"]["subPath"] == "feeders/north"
        args = container(workload)["args"]
        assert args[args.index("--model-dir") + 1] == "/var/lib/gridwatch"
        assert {e["name"]: e["value"] for e in container(workload)["env"]}["MODEL_DIR"] == "/var/lib/gridwatch"


# --- how it runs: security, labels, resources, Job semantics ----------------------------------------------------


def test_the_training_pod_is_locked_down_like_the_backend(training: Rendered):
    backend = pod_spec(training.get("Deployment", BACKEND))
    for workload in workloads(training):
        spec = pod_spec(workload)
        assert spec["securityContext"] == backend["securityContext"]
        assert spec["securityContext"]["runAsUser"] == VALUES["securityContext"]["runAsUser"] == 10001
        assert container(workload)["securityContext"] == backend["containers"][0]["securityContext"]
        assert container(workload)["securityContext"]["readOnlyRootFilesystem"] is True
        assert container(workload)["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert spec["serviceAccountName"] == backend["serviceAccountName"]
        assert spec["restartPolicy"] == "Never", "a failed attempt keeps its pod and log"
        assert container(workload)["resources"] == VALUES["training"]["resources"]


def test_labels_name_the_training_component(chart: Path, training: Rendered):
    for workload in workloads(training):
        for labels in (workload["metadata"]["labels"], pod_labels(workload)):
            assert labels["app.kubernetes.io/component"] == "training"
            assert labels["app.kubernetes.io/name"] == "gridwatch"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/part-of"] == "gridwatch"
            assert labels["helm.sh/chart"] == f"gridwatch-{CHART['version']}"
        assert workload["metadata"]["namespace"] == NAMESPACE
    for name in (BACKEND, f"{RELEASE}-ui"):
        selector = training.get("Deployment", name)["spec"]["selector"]["matchLabels"]
        assert not selects(selector, pod_labels(training.get("Job", JOB))), f"{name} must not adopt training pods"
    backend_service = training.get("Service", BACKEND)["spec"]["selector"]
    assert not selects(backend_service, pod_labels(training.get("Job", JOB))), "no traffic to a training pod"
    extra = with_training(podLabels={"team": "grid"}, podAnnotations={"note": "nightly"})
    template = pod_template(render(chart, extra).get("CronJob", CRON_JOB))
    assert template["metadata"]["labels"]["team"] == "grid"
    assert template["metadata"]["annotations"] == {"note": "nightly"}


def test_the_job_is_a_hook_of_the_install_only_and_never_renders_on_an_upgrade(chart: Path, training: Rendered):
    job = training.get("Job", JOB)
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install", "an upgrade (or a GitOps sync) never retrains"
    upgrade = render(chart, TRAINING, extra=["--is-upgrade"])
    assert not upgrade.of_kind("Job"), "not even rendered: nothing for an upgrade to wait on or fail with"
    assert upgrade.get("CronJob", CRON_JOB), "retraining is the CronJob's"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation", "kept for its log until the next run"
    assert job["metadata"]["name"] == JOB, "a stable name: `kubectl logs job/gridwatch-train`"
    assert job["spec"]["ttlSecondsAfterFinished"] == VALUES["training"]["job"]["ttlSecondsAfterFinished"] == 86400
    cron = training.get("CronJob", CRON_JOB)
    hooks = [key for key in cron["metadata"].get("annotations", {}) if key.startswith("helm.sh/")]
    assert hooks == [], "the CronJob is an object of the release"
    assert "ttlSecondsAfterFinished" not in job_spec(cron), "the history limits keep its Jobs"


def test_a_bad_file_fails_at_once_and_other_failures_retry_briefly(training: Rendered):
    for workload in workloads(training):
        spec = job_spec(workload)
        assert spec["backoffLimit"] == 1
        assert spec["activeDeadlineSeconds"] == 300, "no longer than helm's default --timeout holds the hook"
        fail_job, ignore = spec["podFailurePolicy"]["rules"]
        assert fail_job == {
            "action": "FailJob",
            "onExitCodes": {"containerName": "train", "operator": "In", "values": [2]},
        }, "exit code 2: a file the CLI refuses"
        assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    job, cron = workloads(training)
    assert pod_template(job) == pod_template(cron), "one pod, two triggers"


def test_the_cronjob_runs_one_at_a_time_on_its_schedule(chart: Path, training: Rendered):
    spec = training.get("CronJob", CRON_JOB)["spec"]
    assert spec["schedule"] == "0 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 600
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 1)
    assert spec["suspend"] is False
    assert "timeZone" not in spec, "empty: the controller's zone"
    assert spec["jobTemplate"]["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    zoned = render(chart, with_training(cronJob={"timeZone": "Europe/Berlin", "schedule": "@daily"}))
    zoned_spec = zoned.get("CronJob", CRON_JOB)["spec"]
    assert (zoned_spec["timeZone"], zoned_spec["schedule"]) == ("Europe/Berlin", "@daily")
    kubernetes_validate.validate(zoned.get("CronJob", CRON_JOB), KUBERNETES_VERSION, strict=True)


def test_the_job_fits_a_long_release_name(chart: Path):
    release = "feeder-north-substation-7-long-release"
    objects = render(chart, TRAINING, release=release)
    (cron,) = objects.of_kind("CronJob")
    assert len(cron["metadata"]["name"]) <= 52, "the controller appends 11 characters to its Jobs' names"
    (job,) = objects.of_kind("Job")
    assert job["metadata"]["name"].endswith("-train")


# --- network ----------------------------------------------------------------------------------------------------


def test_training_pods_are_cut_off_from_the_network(chart: Path, training: Rendered):
    policy = training.get("NetworkPolicy", JOB)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in workloads(training):
        assert selects(selector, pod_labels(workload))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert (policy["spec"]["ingress"], policy["spec"]["egress"]) == ([], []), "it needs no network at all"
    for deployment in training.of_kind("Deployment"):
        assert not selects(selector, pod_labels(deployment)), "only the training pods"
    backend_policy = training.get("NetworkPolicy", BACKEND)
    peers = [peer for rule in backend_policy["spec"]["ingress"] for peer in rule["from"]]
    job_labels = pod_labels(training.get("Job", JOB))
    assert not [p for p in peers if selects(p.get("podSelector", {}).get("matchLabels", {}), job_labels)], (
        "the backend does not admit the training pods: they never call it"
    )
    open_network = render(chart, {**TRAINING, "networkPolicy": {"enabled": False}})
    assert not open_network.of_kind("NetworkPolicy")


# --- refused at render time -------------------------------------------------------------------------------------


@pytest.mark.parametrize("switch", ["job", "cronJob"])
def test_training_refuses_models_in_an_emptydir(chart: Path, switch: str):
    values = {"training": {switch: {"enabled": True}, "data": {"existingClaim": "gridwatch-data", "file": "f.csv"}}}
    stderr = refusal(chart, values)
    assert "need backend.modelStorage.persistence.enabled=true" in stderr
    assert "emptyDir is private to each backend pod" in stderr
    assert "ReadWriteMany" in stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"existingClaim": "", "file": "feeder.csv"}, "training.data.existingClaim is required"),
        ({"existingClaim": "gridwatch-data", "file": ""}, "training.data.file is required"),
    ],
)
def test_training_refuses_to_render_without_its_data(chart: Path, data: dict, message: str):
    stderr = refusal(chart, with_training(data=data))
    assert message in stderr


def test_training_refuses_a_models_claim_only_one_pod_can_mount(chart: Path):
    values = {**TRAINING, "backend": {"modelStorage": {"persistence": {"enabled": True}}}}
    values["backend"]["modelStorage"]["persistence"]["accessModes"] = ["ReadWriteOncePod"]
    assert "ReadWriteOncePod" in refusal(chart, values)
    values["backend"]["modelStorage"]["persistence"]["accessModes"] = ["ReadWriteOnce"]
    assert render(chart, values).of_kind("Job"), "ReadWriteOnce works where the pods share a node (kind)"


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("training.cronJob.schedule=3", "/training/cronJob/schedule"),
        ('training.cronJob.schedule="every night"', "/training/cronJob/schedule"),
        ('training.cronJob.schedule="CRON_TZ=UTC 0 3 * * *"', "/training/cronJob/schedule"),
        ('training.cronJob.timeZone="Berlin time"', "/training/cronJob/timeZone"),
        ('training.cronJob.concurrencyPolicy="Sometimes"', "/training/cronJob/concurrencyPolicy"),
        ("training.holdout=-0.1", "/training/holdout"),
        ("training.holdout=0", "/training/holdout"),
        ("training.holdout=1", "/training/holdout"),
        ('training.holdout="0.0"', "/training/holdout"),
        ('training.holdout="a fifth"', "/training/holdout"),
        ("training.contamination=0.5", "/training/contamination"),
        ("training.contamination=0", "/training/contamination"),
        ('training.contamination="0.5"', "/training/contamination"),
        ('training.data.file="../../etc/passwd.csv"', "/training/data/file"),
        ('training.data.file="/data/feeder.csv"', "/training/data/file"),
        ('training.data.file="feeder.txt"', "/training/data/file"),
        ('training.data.subPath="../other"', "/training/data/subPath"),
        ('training.data.existingClaim="Feeder_Data"', "/training/data/existingClaim"),
        ("training.backoffLimit=-1", "/training/backoffLimit"),
        ('training.extraArgs=["--seed", 7]', "/training/extraArgs"),
        ("training.enabled=true", "/training"),
    ],
)
def test_schema_rejects_bad_training_values(chart: Path, setting: str, path: str):
    """Each value given as JSON (`--set-json`), so a number stays a number and text stays text."""
    assert path in schema_refusal(chart, "--set-json", setting)


@pytest.mark.parametrize(
    "setting",
    [
        "training.holdout=0.01",
        "training.holdout=0.99",
        'training.holdout=".5"',
        "training.contamination=0.49",
        'training.contamination="0.0005"',
        "training.contamination=null",
        'training.cronJob.schedule="*/15 6-18 * * 1-5"',
        'training.data.file="2026/08/Feeder-North.PARQUET"',
    ],
)
def test_schema_accepts_values_just_inside_the_bounds(chart: Path, setting: str):
    helm(*template_args(chart, None, extra=["--set-json", setting]))


# --- the walkthrough of docs/deploy.md --------------------------------------------------------------------------


def _guide_section() -> str:
    return DEPLOY_GUIDE.split("\n## Training in the cluster\n", 1)[1].split("\n## ", 1)[0]


def _shell_blocks(section: str) -> list[str]:
    return [textwrap.dedent(block) for block in re.findall(r"```bash\n(.*?)\n *```", section, flags=re.DOTALL)]


def test_the_guide_upgrade_renders_the_cronjob_whose_run_it_then_reads(chart: Path):
    section = _guide_section()
    (upgrade,) = [block for block in _shell_blocks(section) if "helm upgrade" in block]
    words = shlex.split(upgrade.replace("\\\n", " "))
    assert words[:5] == ["helm", "upgrade", RELEASE, "helm/gridwatch", "-n"]
    sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    objects = render(chart, extra=["--is-upgrade", *[arg for value in sets for arg in ("--set", value)]])
    assert not objects.of_kind("Job"), "an upgrade renders no training Job"
    cron = objects.get("CronJob", CRON_JOB)
    (run,) = re.findall(rf"create job (\S+) --from=cronjob/{CRON_JOB}", section)
    assert f"wait --for=condition=complete job/{run}" in section
    assert f"logs job/{run}" in section
    job = cron  # `create job --from=cronjob` runs its jobTemplate
    data = mounts(job)["/data"]["volume"]["persistentVolumeClaim"]["claimName"]
    file = container(job)["args"][container(job)["args"].index("--data") + 1].removeprefix("/data/")
    loader_blocks = [block for block in _shell_blocks(section) if "<<'YAML'" in block]
    (loader,) = loader_blocks
    manifests = [doc for doc in yaml.safe_load_all(loader.split("<<'YAML'\n", 1)[1].split("\nYAML", 1)[0]) if doc]
    claim, pod = manifests
    assert claim["metadata"]["name"] == data, "the claim the guide creates is the one the Job mounts"
    for obj in manifests:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    backend_image = container(objects.get("Deployment", BACKEND))["image"]
    assert pod["spec"]["containers"][0]["image"] == backend_image, "the image `make kind` pushed"
    simulate = next(block for block in _shell_blocks(section) if "gridwatch simulate" in block)
    local_file = shlex.split(simulate.replace("\\\n", " "))[-1]
    assert f"cp {local_file} {pod['metadata']['name']}:/data/{file}" in section
    deployment = objects.get("Deployment", BACKEND)["metadata"]["name"]
    assert f"exec deploy/{deployment} -- gridwatch models --model-dir /models rollback" in section


def test_the_guide_names_the_cronjob_the_chart_renders(training: Rendered):
    section = _guide_section()
    assert f"--from=cronjob/{CRON_JOB}" in section
    assert "training.cronJob.enabled=true" in section
    assert f"`{VALUES['training']['cronJob']['schedule']}`" in section, "the default schedule, as documented"


def test_notes_say_where_the_decision_is(chart: Path, tmp_path: Path):
    values = values_file(tmp_path, TRAINING)
    result = helm("install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client", "--values", str(values))
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"logs job/{JOB}" in notes
    assert f"--from=cronjob/{CRON_JOB}" in notes
    plain = helm("install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client").stdout
    assert "Training" not in plain.split("NOTES:", 1)[1]


# --- the CronJob's alert: GridWatchTrainingOverdue ----------------------------------------------------------------

TRAINING_RULE = f"{RELEASE}-training"


def test_the_cronjob_brings_its_alert_setting_for_its_own_name_and_namespace(training: Rendered):
    """The shared alert joins kube-state-metrics' CronJob series with a setting each release records for its own
    CronJob: the labels must be the namespace and name kube-state-metrics reports for the rendered CronJob."""
    rule = training.get("PrometheusRule", TRAINING_RULE)
    assert rule["metadata"]["labels"]["release"] == RELEASE, "selected by the stack's Prometheus like the others"
    [group] = rule["spec"]["groups"]
    [record] = group["rules"]
    assert record["record"] in CHART_RECORDED
    assert record["expr"] == f"vector({VALUES['training']['cronJob']['alertAfterSeconds']})"
    cron = training.get("CronJob", CRON_JOB)["metadata"]["name"]
    assert record["labels"] == {"namespace": NAMESPACE, "cronjob": cron}
    assert VALUES["training"]["cronJob"]["alertAfterSeconds"] == 36 * 3600, "a missed daily run, plus half a day"


def test_no_cronjob_or_no_threshold_records_no_setting(chart: Path):
    assert TRAINING_RULE not in render(chart, with_training(cronJob={"enabled": False})).names("PrometheusRule")
    off = render(chart, with_training(cronJob={"enabled": True, "alertAfterSeconds": 0}))
    assert TRAINING_RULE not in off.names("PrometheusRule")
    unmonitored = render(chart, merged(TRAINING, {"monitoring": {"serviceMonitor": {"enabled": False}}}))
    assert TRAINING_RULE not in unmonitored.names("PrometheusRule")


def test_a_second_release_without_the_shared_rules_still_records_its_setting(chart: Path):
    second = render(chart, merged(TRAINING, {"monitoring": {"prometheusRule": {"enabled": False}}}))
    assert second.names("PrometheusRule") == {TRAINING_RULE}


def test_the_rendered_setting_makes_the_shared_alert_fire_for_the_rendered_cronjob(
    chart: Path, training: Rendered, tmp_path: Path
):
    """promtool evaluates the shared rule files together with the group this chart renders: a CronJob named as
    rendered, created 37 hours ago and never successful, is overdue; the same CronJob in another namespace (no
    setting there) is not GridWatch's to judge."""
    promtool = require_tool("promtool")
    cron = training.get("CronJob", CRON_JOB)["metadata"]["name"]
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"groups": training.get("PrometheusRule", TRAINING_RULE)["spec"]["groups"]}))
    hours = 38 * 60
    [alert] = [rule for rule in alerting_rules() if rule["alert"] == "GridWatchTrainingOverdue"]
    filled = {"$labels.namespace": NAMESPACE, "$labels.cronjob": cron, "$value | humanizeDuration": "1d 13h 0m 0s"}
    annotations = {}
    for key, template in alert["annotations"].items():
        text = template
        for placeholder, value in filled.items():
            text = text.replace("{{ " + placeholder + " }}", value)
        annotations[key] = text.strip()

    def series(name: str, namespace: str, value: str) -> dict[str, str]:
        labels = f'job="kube-state-metrics", namespace="{namespace}", cronjob="{cron}"'
        return {"series": f"{name}{{{labels}}}", "values": f"{value}x{hours}"}

    test = {
        "rule_files": [str(settings), str(ROOT / "prometheus-rules" / "gridwatch-alerts.yaml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("kube_cronjob_created", NAMESPACE, "0"),
                    series("kube_cronjob_spec_suspend", NAMESPACE, "0"),
                    series("kube_cronjob_created", "elsewhere", "0"),
                ],
                "alert_rule_test": [
                    {"eval_time": "35h", "alertname": "GridWatchTrainingOverdue", "exp_alerts": []},
                    {
                        "eval_time": "37h",
                        "alertname": "GridWatchTrainingOverdue",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "namespace": NAMESPACE, "cronjob": cron},
                                "exp_annotations": annotations,
                            },
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "overdue_test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
