"""Kube.call: every call gets the timeout and is counted; 401/403 become Forbidden naming
the permission, never the API server's body."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from skiplock_operator.kube import Forbidden, Kube, data_checksum


def calls(verb: str) -> float:
    return REGISTRY.get_sample_value("skiplock_operator_kube_calls_total", {"verb": verb}) or 0


def test_timeout_is_passed_and_the_call_counted() -> None:
    kube = Kube(client.ApiClient(), timeout=7)
    seen: dict[str, Any] = {}

    def fn(*args: Any, **kwargs: Any) -> str:
        seen.update(kwargs, args=args)
        return "ok"

    before = calls("get")
    assert kube.call("get", "secrets", "ns", fn, "db", "ns") == "ok"
    assert seen["_request_timeout"] == (7, 7) and seen["args"] == ("db", "ns")
    assert calls("get") == before + 1


@pytest.mark.parametrize(("status", "body", "needle"), [
    (403, '{"message": "secrets \\"db\\" is forbidden: postgresql://u:pw@h"}',
     "may not get secrets in namespace ns"),
    (401, "Unauthorized", "credentials were rejected"),
])
def test_refusals_name_the_permission_not_the_body(status: int, body: str, needle: str) -> None:
    kube = Kube(client.ApiClient())

    def fn(*args: Any, **kwargs: Any) -> None:
        raise ApiException(status=status, reason="Forbidden")

    def with_body(*args: Any, **kwargs: Any) -> None:
        exc = ApiException(status=status, reason="Forbidden")
        exc.body = body
        raise exc

    for f in (fn, with_body):
        with pytest.raises(Forbidden) as info:
            kube.call("get", "secrets", "ns", f)
        assert needle in str(info.value) and "pw" not in str(info.value)


def test_block_owner_deletion_refusal_names_the_finalizers_permission() -> None:
    kube = Kube(client.ApiClient())

    def fn(*args: Any, **kwargs: Any) -> None:
        exc = ApiException(status=403, reason="Forbidden")
        exc.body = ('{"message": "deployments.apps \\"x\\" is forbidden: cannot set '
                    'blockOwnerDeletion if an ownerReference refers to a resource you can\'t '
                    'set finalizers on"}')
        raise exc

    with pytest.raises(Forbidden) as info:
        kube.call("create", "deployments", "ns", fn)
    assert (info.value.verb, info.value.resource) == ("update", "jobqueues/finalizers")


def test_other_errors_pass_through() -> None:
    def fn(*args: Any, **kwargs: Any) -> None:
        raise ApiException(status=409, reason="Conflict")

    with pytest.raises(ApiException):
        Kube(client.ApiClient()).call("patch", "deployments/scale", "ns", fn)


def test_checksum_is_salted_and_follows_the_data() -> None:
    a = data_checksum("uid-1", {"url": "c2VjcmV0"})
    assert a == data_checksum("uid-1", {"url": "c2VjcmV0"})
    assert a != data_checksum("uid-2", {"url": "c2VjcmV0"})
    assert a != data_checksum("uid-1", {"url": "b3RoZXI="})
