"""put_if_absent: the one conditional write. How it reads the store's answers (a fake client here;
tests/integration/test_ingest_quality_s3.py checks that the store really enforces If-None-Match)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from aifactory.data import s3 as s3mod
from aifactory.data.s3 import put_if_absent


def _error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


class _Store:
    """Answers each put_object with the next of ``answers`` (None: written)."""

    def __init__(self, *answers: ClientError | None) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        return {}


def test_written_with_if_none_match() -> None:
    store = _Store(None)
    assert put_if_absent(store, "b", "t/datasets/x/v-1/manifest.json", b"{}", content_type="application/json")
    (call,) = store.calls
    assert call["IfNoneMatch"] == "*" and call["ContentType"] == "application/json" and call["Body"] == b"{}"


@pytest.mark.parametrize("code", ["PreconditionFailed", "412"])
def test_an_existing_key_is_reported_not_overwritten(code: str) -> None:
    store = _Store(_error(code, 412))
    assert put_if_absent(store, "b", "k", b"new") is False
    assert len(store.calls) == 1


def test_a_conflicting_write_in_flight_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    store = _Store(_error("ConditionalRequestConflict", 409), None)
    assert put_if_absent(store, "b", "k", b"x") is True
    assert len(store.calls) == 2


def test_a_conflict_that_persists_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    store = _Store(*[_error("ConditionalRequestConflict", 409)] * s3mod.PUT_IF_ABSENT_ATTEMPTS)
    with pytest.raises(ClientError):
        put_if_absent(store, "b", "k", b"x")
    assert len(store.calls) == s3mod.PUT_IF_ABSENT_ATTEMPTS


def test_other_errors_are_raised_at_once() -> None:
    store = _Store(_error("AccessDenied", 403))
    with pytest.raises(ClientError, match="AccessDenied"):
        put_if_absent(store, "b", "k", b"x")
    assert len(store.calls) == 1
