"""The operator and its workers behind a real PgBouncer (pool_mode=transaction), against a real
kube-apiserver: stats are read through the pooler, the migrations and the NOTIFY listener go
over the direct URL (a pooler cannot carry them), and the workers are told both."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.operator.conftest import Cluster
from tests.integration.operator.envtest import OperatorThread
from tests.integration.operator.test_operator import spec
from tests.support.pgbouncer import PgBouncer, running_pgbouncer
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow
_names = itertools.count()


@pytest.fixture(scope="module")
def bouncer(pg: PgServer) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg) as b:
        yield b


@pytest.fixture
def empty_database(pg: PgServer) -> Iterator[str]:
    """A database with no Skiplock schema: the operator's migration has to build it."""
    name = f"pooled_{next(_names)}"
    with pg.admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg.url(name)
    with pg.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def env_of(cluster: Cluster, deployment: str) -> dict[str, object]:
    dep = cluster.deployment(deployment)
    return {e.name: (e.value if e.value is not None else e.value_from.secret_key_ref.name)
            for e in dep.spec.template.spec.containers[0].env
            if e.value is not None or (e.value_from and e.value_from.secret_key_ref)}


def test_behind_pgbouncer_stats_go_through_it_and_migrations_go_direct(
        cluster: Cluster, operator: OperatorThread, bouncer: PgBouncer,
        empty_database: str) -> None:
    pooled = bouncer.pooled(empty_database)
    cluster.secret("pooled", pooled)
    cluster.secret("direct", empty_database)
    jq = spec(jobsPerReplica=10, maxReplicas=3, pollIntervalSeconds=30)
    jq["database"] = {"urlSecretRef": {"name": "pooled"}, "pooler": "transaction",
                      "directUrlSecretRef": {"name": "direct"}}
    cluster.create_jobqueue("pooled", **jq)
    # the migration ran (over the direct URL: through the pooler it is refused) and the
    # stats were read (through the pooler)
    wait_until(lambda: (c := cluster.condition("pooled", "DatabaseReachable"))
               and c["status"] == "True", 60, "stats read after the migration", interval=0.2)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM skiplock.jobs").fetchone() == (0,)
    env = env_of(cluster, "pooled-worker")
    assert env["SKIPLOCK_DATABASE_URL"] == "pooled" and env["SKIPLOCK_LISTEN_URL"] == "direct"
    assert env["SKIPLOCK_POOLER"] == "transaction"

    # a poll every 30 s, yet the scale-up comes at once: the operator LISTENs (direct URL)
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("INSERT INTO skiplock.jobs (queue, task) "
                     "SELECT 'default', 'noop' FROM generate_series(1, 25)")
    wait_until(lambda: cluster.replicas("pooled-worker") == 3, 15,
               "scaled up on the NOTIFY, well before the next poll", interval=0.2)

    # the stats come through PgBouncer: with the database disabled there, it is unreachable
    dbname = empty_database.rsplit("/", 1)[1]
    cluster.patch_jobqueue("pooled", {"spec": {"scaling": {"pollIntervalSeconds": 1}}})
    bouncer.admin(f"DISABLE {dbname}")
    try:
        bouncer.admin(f"KILL {dbname}")
        wait_until(lambda: (c := cluster.condition("pooled", "DatabaseReachable"))
                   and c["status"] == "False", 30, "unreachable without the pooler",
                   interval=0.2)
    finally:
        bouncer.admin(f"ENABLE {dbname}")
        bouncer.admin(f"RESUME {dbname}")
    wait_until(lambda: (c := cluster.condition("pooled", "DatabaseReachable"))
               and c["status"] == "True", 30, "reachable with the pooler back", interval=0.2)


def test_a_declared_pooler_without_a_direct_url_cannot_migrate(
        cluster: Cluster, operator: OperatorThread, bouncer: PgBouncer,
        database_url: str) -> None:
    cluster.secret("pooled", bouncer.pooled(database_url))
    jq = spec()
    jq["database"] = {"urlSecretRef": {"name": "pooled"}, "pooler": "transaction"}
    cluster.create_jobqueue("nodirect", **jq)
    ready = wait_until(lambda: (c := cluster.condition("nodirect", "Ready"))
                       and c["reason"] == "InvalidSpec" and c, 30, "an InvalidSpec condition",
                       interval=0.2)
    assert "directUrlSecretRef" in ready["message"] and "migrate: false" in ready["message"]
    # migrate: false is the other way out: then it reads the stats through the pooler
    cluster.patch_jobqueue("nodirect", {"spec": {"database": {"migrate": False}}})
    wait_until(lambda: (c := cluster.condition("nodirect", "DatabaseReachable"))
               and c["status"] == "True", 30, "stats through the pooler", interval=0.2)
