"""The train and export tasks' extra links and what their pages may show (pure parts, and the
plugin routes with Airflow's login replaced; the real stack: tests/e2e/test_operator_view.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from aifactory import layout, views
from aifactory.hpc.slurm import job_name, parse_sacct
from aifactory.layout import TenantAreas
from aifactory.tenants import load_tenant
from operators import links

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

import aifactory_plugin as plugin  # noqa: E402

DEMO = load_tenant("demo")
RUN = "manual__2026-12-02T18:00:00+00:00"


class _Task:
    def __init__(self, task_type: str) -> None:
        self.task_type = task_type


class _Key:
    dag_id, run_id, task_id, map_index = "factory_demo", RUN, "train", -1


def _record(job_id: str = "42", name: str | None = None, account: str = "demo"):
    name = name or job_name("demo", "factory_demo", RUN, "train")
    line = f"{job_id}|{name}|{account}|debug|COMPLETED|0:0|00:00:05|cpu=1|n1|2026-12-02T18:00:00|" \
           "2026-12-02T18:00:01|2026-12-02T18:00:06|None"
    (record,) = parse_sacct(line)
    return record


def test_links_are_named_for_the_classes_they_belong_to():
    from operators.stages import ExportModelOperator
    from operators.training import RecipeTrainOperator

    assert links.TRAIN_TASK_TYPES == {RecipeTrainOperator.__name__}
    assert links.EXPORT_TASK_TYPES == {ExportModelOperator.__name__}
    assert [link.name for link in plugin.AIFactoryPlugin.global_operator_extra_links] == \
        ["Slurm job", "Slurm job log", "Model card"]


def test_a_link_is_empty_on_other_tasks_and_keyed_by_the_task_instance_on_its_own():
    assert links.SlurmJobLink().get_link(_Task("IngestOperator"), ti_key=_Key()) == ""
    assert links.ModelCardLink().get_link(_Task("RecipeTrainOperator"), ti_key=_Key()) == ""
    url = urlsplit(links.SlurmLogLink().get_link(_Task("RecipeTrainOperator"), ti_key=_Key()))
    assert url.path == "/aifactory/tasks/slurm-log"
    # the run id's ':' and '+' survive the query string (parse_qs decodes them back)
    assert parse_qs(url.query) == {"dag_id": ["factory_demo"], "run_id": [RUN], "task_id": ["train"]}


def test_task_page_url_names_a_mapped_task_and_refuses_unknown_pages():
    url = views.task_page_url(views.CARD_PAGE, dag_id="d", run_id="r", task_id="t", map_index=3, base_path="/af/")
    assert url == "/af/aifactory/tasks/model-card?dag_id=d&run_id=r&task_id=t&map_index=3"
    with pytest.raises(ValueError, match="unknown task page"):
        views.task_page_url("secrets", dag_id="d", run_id="r", task_id="t")


def test_a_job_is_shown_only_under_the_tenants_account_with_a_name_made_for_it():
    assert views.owns_job(_record(), DEMO)
    assert not views.owns_job(_record(account="acme"), DEMO)  # another tenant's account
    assert not views.owns_job(_record(name=job_name("acme", "factory_acme", RUN, "train")), DEMO)
    assert not views.owns_job(_record(name="interactive"), DEMO)  # not a job the factory submitted


def test_the_job_page_points_at_the_log_in_the_tenants_run_dir():
    record = _record()
    log = views.job_log_path(TenantAreas(project="/project/demo", scratch="/scratch/aifp-demo"), record)
    assert log == f"/project/demo/runs/{record.name}/slurm-42.out"
    page = views.job_page(record, DEMO, log_path=log)
    assert page["state"] == "COMPLETED" and page["tenant"] == "demo"
    assert page["log_page"] == "/aifactory/tenants/demo/jobs/42/log"


def test_the_train_tasks_job_name_is_the_one_the_operator_submits_under():
    assert views.train_job_name(DEMO, dag_id="factory_demo", run_id=RUN, task_id="train") == \
        job_name("demo", "factory_demo", RUN, "train", -1)


def test_a_model_card_is_read_only_for_acceptable_names_inside_the_tenants_models():
    assert views.model_of_export({"model": "iris-tabular-classifier", "version": "v-0123456789ab"}) == \
        ("iris-tabular-classifier", "v-0123456789ab")
    for bad in ({"model": "../acme", "version": "v-0123456789ab"}, {"model": "m", "version": "latest"}, None, []):
        assert views.model_of_export(bad) is None
    assert views.card_key(DEMO, "iris", "v-0123456789ab") == "demo/models/iris/v-0123456789ab/MODEL_CARD.md"
    assert views.card_key(DEMO, "iris/../../acme", "v-0123456789ab") is None


def test_a_dag_belongs_to_the_tenant_that_runs_it():
    acme = replace(DEMO, tenant="acme")
    assert views.tenant_of_dag("factory_acme", [DEMO, acme]) is acme
    assert views.tenant_of_dag("platform_slurm_sweep_local", [DEMO, acme]) is None
    feed = DEMO.feeds[0].name  # a feed's training DAG trains and exports too; the feed DAG is the tenant's
    for dag_id in (layout.feed_training_dag_id("demo", feed), layout.feed_dag_id("demo", feed)):
        assert views.tenant_of_dag(dag_id, [acme, DEMO]) is DEMO


@pytest.mark.parametrize("path", ["/tenants/demo/jobs/1", "/tenants/demo/jobs/1/log",
                                  "/tenants/demo/models/m/v-0123456789ab/card",
                                  "/tasks/slurm-job?dag_id=factory_demo&run_id=r&task_id=train"])
def test_every_page_answers_401_without_a_login(path):
    assert TestClient(plugin.app).get(path).status_code == 401


def test_pages_of_a_dag_or_tenant_the_caller_may_not_read_answer_404_before_any_lookup():
    plugin.app.dependency_overrides[get_user] = lambda: object()
    plugin.app.dependency_overrides[plugin.authorized_dag_ids] = lambda: {"factory_demo"}
    try:
        client = TestClient(plugin.app)
        for path in ("/tenants/acme/jobs/1", "/tenants/acme/jobs/1/log", "/tenants/acme/models/m/v-0123456789ab/card",
                     "/tasks/slurm-job?dag_id=factory_acme&run_id=r&task_id=train",
                     "/tasks/model-card?dag_id=factory_acme&run_id=r&task_id=export",
                     "/tasks/unknown?dag_id=factory_demo&run_id=r&task_id=train"):
            assert client.get(path, follow_redirects=False).status_code == 404, path
    finally:
        plugin.app.dependency_overrides.clear()
