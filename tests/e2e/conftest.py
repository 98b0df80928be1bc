"""Fixtures of the end-to-end tests: runs go through the real scheduler, triggered over REST."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aifactory.local.airflow_api import AirflowClient


@pytest.fixture(scope="module")
def api(stack_env) -> AirflowClient:
    """A REST client logged in as the platform admin (every DAG), with the demo pipeline parsed
    and unpaused."""
    client = AirflowClient.login(env=stack_env)
    client.wait_for_dag("factory_demo")
    client.unpause("factory_demo")
    return client


@pytest.fixture(scope="module")
def api_as(stack_env) -> Callable[[str], AirflowClient]:
    """``api_as("demo")``: a REST client logged in as that generated login (a tenant's user,
    ``platform``, ``operator``), with only that login's rights."""
    return lambda login: AirflowClient.login(login, stack_env)
