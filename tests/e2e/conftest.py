"""Fixtures of the end-to-end tests: runs go through the real scheduler, triggered over REST."""

from __future__ import annotations

import pytest

from aifactory.local.airflow_api import AirflowClient
from aifactory.local.localstack import admin_password


@pytest.fixture(scope="module")
def api(stack_env) -> AirflowClient:
    """A REST client logged in as admin, with the demo pipeline parsed and unpaused."""
    client = AirflowClient(stack_env["AIFP_AIRFLOW_URL"], "admin", admin_password(stack_env))
    client.wait_for_dag("factory_demo")
    client.unpause("factory_demo")
    return client
