"""`make dashboard-snapshot`: the chart's Grafana dashboard evaluated from a real run, drawn
with matplotlib (Grafana itself is AGPL and not used here).

1. Reuses the e2e suite's kind cluster (the chart installed, operator and dev Postgres
   running), or builds it with ``E2E_KEEP_CLUSTER=1 bash e2e/run.sh -k test_1``.
2. Runs Debian's Prometheus 2.42 on loopback with its own TSDB in a temp dir. It scrapes every
   container port named "metrics" (operator and worker pods) through the API server's pod
   proxy, from a file_sd list rewritten every 2 s (Debian builds Prometheus without
   kubernetes_sd), so pods that come and go as the operator scales need no port-forward each;
   and a ``skiplock api`` on the host (the queue gauges come only from the API's /metrics).
3. Applies a JobQueue whose workers run benchmarks/dashboard_snapshot_parts/tasks (mounted
   from a ConfigMap) and drives bounded load: bursts that scale 1 -> 4 -> 1 twice, retried and
   dead jobs, a snooze, cancels, deadlines, a job no worker can run, a queue pause, a
   SIGKILLed worker (its leases are rescued) and a JobQueue whose Secret is missing (reconcile
   errors).
4. Evaluates every panel's PromQL with /api/v1/query_range (variables at "All", a stated
   $__rate_interval), draws docs/img/dashboard.png by gridPos and prints a per-panel summary.
   A panel with no series says "no data" in the image and on stdout.

Run from the repository root: ``PYTHONPATH=.:worker .venv/bin/python -m
benchmarks.dashboard_snapshot`` (``--keep-cluster`` leaves the kind cluster for another run;
``--redraw`` draws again from the last run's saved query results).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from e2e.support import CACHE, ROOT, Database, Kubectl, PortForward, enqueue, free_port

from benchmarks.dashboard_snapshot_parts import layout

CLUSTER = os.environ.get("E2E_CLUSTER_NAME", "skiplock-e2e")
KIND = CACHE / "bin" / "kind"
KUBECTL = CACHE / "bin" / "kubectl"
KUBECONFIG = CACHE / "kube" / f"{CLUSTER}.kubeconfig"
# the e2e suite's release (e2e/conftest.py): namespace, Secret and dev-database password
NAMESPACE = "skiplock"
DB_SECRET = "skiplock-postgres"
DB_PASSWORD = "e2e-not-secret"  # the throwaway dev database inside the test cluster
WORKER_IMAGE = f"skiplock/worker:{os.environ.get('SKIPLOCK_IMAGE_TAG', 'dev')}"
APPS_LABEL = "skiplock.dev/e2e-role"
DASHBOARD = ROOT / "charts" / "skiplock" / "files" / "grafana-dashboard.json"
OUT = ROOT / "docs" / "img" / "dashboard.png"
# what the last run's queries returned: --redraw draws from it without a new run
RESULTS = ROOT / "artifacts" / "dashboard-snapshot" / "results.json"
TASKS = Path(__file__).resolve().parent / "dashboard_snapshot_parts" / "tasks"
PROMETHEUS = Path("/usr/bin/prometheus")
QUEUE = "dashboard"
JOBQUEUE = "dashboard"
BROKEN = "dashboard-no-secret"
SCRAPE_SECONDS = 3
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval): 4 x 3 s.
RATE_INTERVAL = "12s"
STEP_SECONDS = 5
TITLE = ("Skiplock dashboard (charts/skiplock/files/grafana-dashboard.json) \u2014 panels "
         "evaluated by Prometheus 2.42 from a real run; drawn with matplotlib, not Grafana")

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[dashboard {time.monotonic() - T0:6.1f}s] {message}", flush=True)


def wait(what: str, check: Callable[[], bool], seconds: float) -> bool:
    """Poll ``check`` once a second for up to ``seconds``; a transient error (a pod or the
    port-forward being replaced) counts as not yet. Returns whether it came true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                say(f"  {what}: yes")
                return True
        time.sleep(1)
    say(f"  {what}: NOT within {seconds:.0f}s (continuing)")
    return False


# --- the cluster ---------------------------------------------------------------------------

def ensure_cluster() -> None:
    have = subprocess.run([str(KIND), "get", "clusters"], capture_output=True, text=True)
    if CLUSTER in have.stdout.split() and KUBECONFIG.exists():
        say(f"reusing kind cluster {CLUSTER}")
        return
    say(f"no kind cluster {CLUSTER}: building it with the e2e suite (test_1, cluster kept)")
    subprocess.run(["bash", "e2e/run.sh", "-k", "test_1"], cwd=ROOT, check=True,
                   env={**os.environ, "E2E_KEEP_CLUSTER": "1"})


def delete_cluster() -> None:
    say(f"deleting kind cluster {CLUSTER}")
    subprocess.run([str(KIND), "delete", "cluster", "--name", CLUSTER], check=False)


def jobqueue_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue",
        "metadata": {"name": JOBQUEUE, "namespace": NAMESPACE},
        "spec": {
            "queues": [QUEUE],
            "database": {"urlSecretRef": {"name": DB_SECRET, "key": "url"}},
            "worker": {
                "image": WORKER_IMAGE, "imagePullPolicy": "IfNotPresent",
                "app": "skiplock_dashboard_tasks:app", "concurrency": 5,
                "leaseSeconds": 10, "shutdownGracePeriodSeconds": 20,
                "env": [{"name": "PYTHONPATH", "value": "/opt/dashboard-tasks"}],
                "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}},
                "podTemplate": {"spec": {
                    "nodeSelector": {APPS_LABEL: "apps"},
                    "volumes": [{"name": "tasks", "configMap": {
                        "name": "dashboard-tasks",
                        "items": [{"key": "init", "path": "skiplock_dashboard_tasks/__init__.py"}],
                    }}],
                    "containers": [{"name": "worker", "volumeMounts": [
                        {"name": "tasks", "mountPath": "/opt/dashboard-tasks", "readOnly": True}]}],
                }},
            },
            "scaling": {
                "minReplicas": 1, "maxReplicas": 4, "jobsPerReplica": 20,
                "activationThreshold": 0, "pollIntervalSeconds": 2,
                "scaleDownStabilizationSeconds": 20,
                "scaleUp": {"pods": 4, "percent": 100, "periodSeconds": 5},
            },
        },
    }


def broken_jobqueue_manifest() -> dict[str, Any]:
    """A JobQueue whose database Secret does not exist: real reconcile errors (and a
    database-down gauge) for the health row, for part of the run."""
    m = jobqueue_manifest()
    m["metadata"]["name"] = BROKEN
    m["spec"]["queues"] = [BROKEN]
    m["spec"]["database"]["urlSecretRef"]["name"] = "dashboard-no-such-secret"
    m["spec"]["scaling"]["minReplicas"] = 0
    return m


def tasks_configmap() -> dict[str, Any]:
    source = (TASKS / "skiplock_dashboard_tasks" / "__init__.py").read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dashboard-tasks", "namespace": NAMESPACE},
            "data": {"init": source}}


def deployment(kubectl: Kubectl) -> dict[str, Any]:
    return kubectl.json("-n", NAMESPACE, "get", "deployment",  # type: ignore[no-any-return]
                        f"{JOBQUEUE}-worker")


def desired(kubectl: Kubectl) -> int:
    return int(deployment(kubectl)["spec"].get("replicas", 0))


def ready(kubectl: Kubectl) -> int:
    return int(deployment(kubectl).get("status", {}).get("readyReplicas", 0) or 0)


def sigkill_a_worker(kubectl: Kubectl) -> str | None:
    """SIGKILL one worker pod's process from its node (a crash: its leases expire and a peer
    rescues its jobs)."""
    selector = f"app.kubernetes.io/instance={JOBQUEUE},app.kubernetes.io/name=skiplock-worker"
    pods = [p for p in kubectl.json("-n", NAMESPACE, "get", "pods", "-l", selector)["items"]
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]
    if not pods:
        return None
    pod = pods[0]["metadata"]["name"]
    node = pods[0]["spec"]["nodeName"]
    script = (f"cid=$(crictl ps -q --label io.kubernetes.pod.name={pod} | head -n1); "
              "pid=$(crictl inspect --output go-template --template '{{.info.pid}}' \"$cid\"); "
              'kill -9 "$pid"')
    subprocess.run(["docker", "exec", node, "sh", "-c", script], check=True, timeout=60)
    return str(pod)


# --- Prometheus ----------------------------------------------------------------------------

def ensure_prometheus() -> None:
    if PROMETHEUS.exists():
        return
    say("installing Debian's prometheus package (its systemd unit is not started)")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _write_private(path: Path, data: bytes) -> None:
    """Written by its owner alone from the first byte: created 0600 (a write, then a chmod,
    left the client key readable by all between the two); O_EXCL, so a file someone put
    there first (with other permissions) is an error, not reused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def prometheus_config(kubectl: Kubectl, tmp: Path, api_port: int) -> Path:
    """Scrape config: every target listed in targets.json (kept current by TargetWriter),
    through the API server's pod proxy, authenticated with the kubeconfig's client
    certificate. (Debian's Prometheus is built without kubernetes_sd, hence the file.)"""
    cfg = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    for name, data in (("ca.crt", cluster["certificate-authority-data"]),
                       ("client.crt", user["client-certificate-data"]),
                       ("client.key", user["client-key-data"])):
        _write_private(tmp / name, base64.b64decode(data))
    (tmp / "targets.json").write_text("[]")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": "2s",
                   "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [{
            "job_name": "skiplock-pods",
            # the operator's own labels (namespace, jobqueue) win over the target's
            "honor_labels": True,
            "scheme": "https",
            "tls_config": {"ca_file": str(tmp / "ca.crt"), "cert_file": str(tmp / "client.crt"),
                           "key_file": str(tmp / "client.key")},
            "file_sd_configs": [{"files": [str(tmp / "targets.json")], "refresh_interval": "5s"}],
        }, {
            # the queue gauges (skiplock_queue_*) come from the HTTP API's /metrics only
            "job_name": "skiplock-api",
            "static_configs": [{"targets": [f"127.0.0.1:{api_port}"],
                                "labels": {"pod": "skiplock-api-on-host"}}],
        }],
    }
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def scrape_targets(pods: list[dict[str, Any]], api_server: str) -> list[dict[str, Any]]:
    """file_sd entries for the running pods' container ports named "metrics": the address is
    the API server, the path its proxy to the pod's port."""
    out = []
    for p in pods:
        if p["status"].get("phase") != "Running" or p["metadata"].get("deletionTimestamp"):
            continue
        name = p["metadata"]["name"]
        for c in p["spec"]["containers"]:
            for port in c.get("ports") or []:
                if port.get("name") == "metrics":
                    out.append({"targets": [api_server], "labels": {
                        "__metrics_path__": f"/api/v1/namespaces/{NAMESPACE}/pods/"
                                            f"{name}:{port['containerPort']}/proxy/metrics",
                        "pod": name,
                        "component": p["metadata"].get("labels", {}).get(
                            "app.kubernetes.io/component", ""),
                    }})
    return out


class TargetWriter:
    """Rewrites targets.json every 2 s from the namespace's pods (workers come and go as the
    operator scales), atomically, so Prometheus never reads half a file."""

    def __init__(self, kubectl: Kubectl, tmp: Path) -> None:
        self.kubectl = kubectl
        self.path = tmp / "targets.json"
        server = json.loads(kubectl("config", "view", "--raw", "-o", "json")
                            )["clusters"][0]["cluster"]["server"]
        self.api_server = urllib.parse.urlparse(server).netloc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def write(self) -> None:
        pods = self.kubectl.json("-n", NAMESPACE, "get", "pods")["items"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(scrape_targets(pods, self.api_server)))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.write()
            self._stop.wait(2)

    def __enter__(self) -> TargetWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def _served(what: str, argv: list[str], log_path: Path, ready: Callable[[], bool],
            env: dict[str, str] | None = None) -> Iterator[None]:
    """``argv`` running (output to ``log_path``) until the block ends, once ``ready()``:
    SIGTERM then, SIGKILL after 20 s; the log's tail in the error if it never gets ready."""
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not wait(what, ready, 60):
            log.flush()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what}: not within 60 s; its log ends:\n{tail}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def prometheus(config: Path, tmp: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _served("Prometheus ready",
                 [str(PROMETHEUS), f"--config.file={config}",
                  f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                  "--storage.tsdb.retention.time=1d"],
                 tmp / "prometheus.log", lambda: _get(f"{url}/-/ready") is not None):
        yield url


@contextlib.contextmanager
def http_api(db_url: str, port: int, tmp: Path) -> Iterator[None]:
    """``skiplock api`` on loopback (no token needed there) against the cluster's Postgres."""
    with _served("skiplock api serving /metrics",
                 [str(ROOT / ".venv" / "bin" / "skiplock"), "api", "--host", "127.0.0.1",
                  "--port", str(port)],
                 tmp / "api.log",
                 lambda: b"skiplock_queue_stats_up" in (
                     _get(f"http://127.0.0.1:{port}/metrics") or b""),
                 env={**os.environ, "SKIPLOCK_DATABASE_URL": db_url}):  # not argv: ps shows it
        yield


def _get(url: str) -> bytes | None:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()  # type: ignore[no-any-return]


def api(url: str, path: str, **params: str) -> Any:
    body = _get(f"{url}{path}?{urllib.parse.urlencode(params)}")
    answer = json.loads(body or b"{}")
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus {path} {params}: {answer}")
    return answer["data"]


def targets_up(url: str) -> str:
    active = api(url, "/api/v1/targets", state="active")["activeTargets"]
    return ", ".join(f"{t['labels'].get('pod')}={t['health']}" for t in active
                     if t["health"] == "up")


# --- load ----------------------------------------------------------------------------------

def drive_load(kubectl: Kubectl, db: Database, db_url: str, budget: float) -> None:
    """Bounded load; every wait has its own cap and the whole run stops after ``budget`` s."""
    from skiplock.client import Client

    end = time.monotonic() + budget

    def left(cap: float) -> float:
        return max(0.0, min(cap, end - time.monotonic()))

    def succeeded_slow() -> int:
        rows = db.query("SELECT count(*) FROM jobs WHERE queue=%s AND task='slow' "
                        "AND state='succeeded'", QUEUE)
        return int(rows[0][0])

    with Client(db_url, validate=False) as client:
        say("burst 1: 2000 x slow(0.25 s), 40 flaky (2 failures each), 15 poison, "
            "30 snoozy (2 snoozes), 5 sleepers, 1 job for a task no worker has")
        # the sleepers first: the claim takes the oldest, and the cancels wait for them to run
        cancel_ids = [client.enqueue("sleeper", {"seconds": 90}, queue=QUEUE)
                      for _ in range(3)]
        for _ in range(2):  # their deadline stops them ("timeout" runs stopped)
            client.enqueue("sleeper", {"seconds": 90}, queue=QUEUE, timeout=4)
        client.enqueue("not_deployed_anywhere", {}, queue=QUEUE)
        enqueue(db, QUEUE, "slow", {"seconds": 0.25}, 2000)
        enqueue(db, QUEUE, "flaky", {"fail_times": 2}, 40)
        enqueue(db, QUEUE, "poison", {"reason": "dashboard"}, 15, max_attempts=3)
        enqueue(db, QUEUE, "snoozy", {"times": 2, "seconds": 4}, 30)
        say(f"JobQueue {BROKEN}: its database Secret does not exist (reconcile errors)")
        kubectl.apply(json.dumps(broken_jobqueue_manifest()))
        wait("the sleepers to run", lambda: all(
            (client.get_job(i) or {}).get("state") == "running" for i in cancel_ids), left(90))
        for i in cancel_ids:
            say(f"  cancel job {i}: {client.cancel(i, 'dashboard snapshot')}")
        wait("4 desired replicas", lambda: desired(kubectl) == 4, left(120))
        wait("4 ready workers", lambda: ready(kubectl) == 4, left(180))
        say("pause the queue for 15 s")
        client.pause_queue(QUEUE, "dashboard snapshot")
        time.sleep(left(15))
        client.resume_queue(QUEUE)
        killed = sigkill_a_worker(kubectl)
        say(f"SIGKILLed worker pod {killed} (its leases expire; a peer rescues the jobs)")
        wait("burst 1 drained (2000 slow succeeded)", lambda: succeeded_slow() >= 2000, left(420))
        wait("back to 1 desired replica", lambda: desired(kubectl) == 1, left(180))
        kubectl("-n", NAMESPACE, "delete", "jobqueue", BROKEN, "--wait=false")
        if left(600) < 120:
            say("budget nearly spent: skipping burst 2")
            return
        say("burst 2: 1200 x slow(0.25 s)")
        enqueue(db, QUEUE, "slow", {"seconds": 0.25}, 1200)
        wait("scale up again", lambda: desired(kubectl) >= 3, left(120))
        wait("burst 2 drained", lambda: succeeded_slow() >= 3200, left(300))
        wait("back to 1 desired replica", lambda: desired(kubectl) == 1, left(180))
    say("job states: " + ", ".join(f"{s}={n}" for s, n in db.query(
        "SELECT state::text, count(*) FROM jobs WHERE queue=%s GROUP BY 1 ORDER BY 1", QUEUE)))


# --- evaluate and draw ---------------------------------------------------------------------

Series = tuple[str, list[float], list[float]]  # legend, timestamps, values


def evaluate(url: str, dashboard: dict[str, Any], start: float, end: float
             ) -> dict[str, list[Series]]:
    variables = layout.all_values(dashboard)
    out: dict[str, list[Series]] = {}
    for panel in layout.panels(dashboard):
        if panel.kind == "row":
            continue
        got: list[Series] = []
        for target in panel.targets:
            query = layout.substitute(target.expr, variables, RATE_INTERVAL)
            data = api(url, "/api/v1/query_range", query=query, start=f"{start:.3f}",
                       end=f"{end:.3f}", step=f"{STEP_SECONDS}s")
            for s in data["result"]:
                got.append((layout.legend(target.legend, s["metric"]),
                            [float(t) for t, _ in s["values"]],
                            [float(v) for _, v in s["values"]]))
        out[panel.title] = got
    return out


def draw(dashboard: dict[str, Any], results: dict[str, list[Series]], start: float,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = layout.panels(dashboard)
    bad = layout.overlaps(items)
    if bad:
        raise layout.DashboardError(f"panels overlap on the grid: {bad}")
    rows = layout.grid_height(items)
    header = 1.2  # inches for the title
    width, per_row = 24.0, 0.42  # inches for 24 columns, inches per grid row
    fig = plt.figure(figsize=(width, rows * per_row + header))
    top = rows * per_row / (rows * per_row + header)
    fig.suptitle(TITLE, fontsize=15, y=1 - 0.35 * header / (rows * per_row + header))
    fig.text(0.5, 1 - 0.75 * header / (rows * per_row + header),
             f"x: minutes since the run started; variables at All (=~\".*\"); "
             f"$__rate_interval = {RATE_INTERVAL}; scrape {SCRAPE_SECONDS} s; "
             f"step {STEP_SECONDS} s", ha="center", fontsize=10, color="0.3")
    for panel in items:
        left, bottom, w, h = layout.cell(panel, rows)
        bottom *= top
        h *= top
        if panel.kind == "row":
            fig.text(left + 0.004, bottom + h * 0.3, panel.title, fontsize=13,
                     fontweight="bold", color="0.15")
            fig.add_artist(matplotlib.lines.Line2D([0.004, 0.996], [bottom + h * 0.15] * 2,
                                                   color="0.6", linewidth=0.8))
            continue
        series = results.get(panel.title, [])
        # the cell: a title line, the plot, and a legend band below it
        ax = fig.add_axes((left + w * 0.09, bottom + h * 0.36, w * 0.87, h * 0.52))
        ax.set_title(panel.title, fontsize=10.5, loc="left", fontweight="bold")
        ax.tick_params(labelsize=7.5)
        ax.grid(True, color="0.9")
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    fontsize=16, color="tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if len(series) > 10:  # tab10 would repeat colours within the panel
            ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)])
        for name, ts, vs in series:
            ax.plot([(t - start) / 60 for t in ts], vs, label=name or "(no labels)",
                    linewidth=1.2)
        unit = {"s": "seconds", "ops": "per second"}.get(panel.unit)
        if unit:
            ax.set_ylabel(unit, fontsize=7.5)
        ax.set_xlim(left=0)
        handles, labels = ax.get_legend_handles_labels()
        ncol = 1 if len(labels) <= 3 else 2 if len(labels) <= 8 else 3
        ax.legend(handles[:15], labels[:15], loc="upper left", bbox_to_anchor=(0, -0.13),
                  ncol=ncol, fontsize=7, frameon=False,
                  handlelength=1.5, columnspacing=1.0, borderaxespad=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(dashboard: dict[str, Any], results: dict[str, list[Series]]) -> list[str]:
    empty = []
    print(f"{'panel':44} {'series':>6} {'points':>7} {'min':>10} {'max':>10}")
    for panel in layout.panels(dashboard):
        if panel.kind == "row":
            print(f"-- {panel.title}")
            continue
        series = results.get(panel.title, [])
        s = layout.summarise(vs for _, _, vs in series)
        low = "-" if s.low is None else f"{s.low:.4g}"
        high = "-" if s.high is None else f"{s.high:.4g}"
        flag = "" if s.series else "  NO DATA"
        print(f"{panel.title[:44]:44} {s.series:6} {s.points:7} {low:>10} {high:>10}{flag}")
        if not s.series:
            empty.append(panel.title)
    return empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cluster", action="store_true",
                        help="leave the kind cluster for another run (default: delete it)")
    parser.add_argument("--budget", type=float, default=900,
                        help="seconds the load phase may take at most (default 900)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--redraw", action="store_true",
                        help=f"only draw again from the last run's {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    layout.panels(dashboard)  # a broken dashboard fails before the slow part
    if args.redraw:
        saved = json.loads(RESULTS.read_text())
        draw(dashboard, saved["results"], saved["start"], args.out)
        return 1 if report(dashboard, saved["results"]) else 0
    ensure_prometheus()
    ensure_cluster()
    kubectl = Kubectl(KUBECTL, KUBECONFIG)
    tmp = Path(tempfile.mkdtemp(prefix="skiplock-dashboard-"))
    stack = contextlib.ExitStack()
    try:
        kubectl("-n", NAMESPACE, "delete", "jobqueue", JOBQUEUE, BROKEN, "--ignore-not-found",
                "--wait=true", timeout=120)
        kubectl.apply(json.dumps(tasks_configmap()))
        api_port = free_port()
        with prometheus(prometheus_config(kubectl, tmp, api_port), tmp) as prom, \
                TargetWriter(kubectl, tmp), \
                PortForward(kubectl, NAMESPACE, f"svc/{DB_SECRET}", 5432) as forward:
            db_url = (f"postgresql://skiplock:{DB_PASSWORD}@127.0.0.1:{forward.local_port}"
                      "/skiplock")
            db = Database(db_url, forward)
            stack.enter_context(http_api(db_url, api_port, tmp))
            # jobs of an earlier run of this script would mix into the panels
            db.query("DELETE FROM jobs WHERE queue=%s", QUEUE)
            db.query("DELETE FROM paused_queues WHERE queue=%s", QUEUE)
            start = time.time()
            kubectl.apply(json.dumps(jobqueue_manifest()))
            wait("1 ready worker", lambda: ready(kubectl) == 1, 240)
            wait("Prometheus scrapes the operator, a worker and the API", lambda: all(
                f"{name}" in targets_up(prom) for name in ("operator", f"{JOBQUEUE}-worker",
                                                           "skiplock-api")), 90)
            say(f"targets: {targets_up(prom)}")
            time.sleep(20)  # an idle baseline before the first burst
            drive_load(kubectl, db, db_url, args.budget)
            time.sleep(15)
            end = time.time()
            say(f"targets: {targets_up(prom)}")
            say(f"evaluating every panel over {end - start:.0f} s")
            results = evaluate(prom, dashboard, start, end)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"start": start, "results": results}))
            stack.close()
        draw(dashboard, results, start, args.out)
        say(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
        empty = report(dashboard, results)
        if empty:
            print(f"panels with no data ({len(empty)}): {', '.join(empty)}")
        say(f"done in {time.monotonic() - T0:.0f} s")
        return 1 if empty else 0
    finally:
        stack.close()
        kubectl("-n", NAMESPACE, "delete", "jobqueue", JOBQUEUE, BROKEN, "--ignore-not-found",
                "--wait=false", check=False)
        kubectl("-n", NAMESPACE, "delete", "configmap", "dashboard-tasks", "--ignore-not-found",
                check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep_cluster:
            delete_cluster()


if __name__ == "__main__":
    sys.exit(main())
