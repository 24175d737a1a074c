from typing import Any

import pytest

from skiplock import App, JobContext
from skiplock.catalogue import check_known, describe_params, validate_args
from skiplock.errors import InvalidArguments, UnknownTask


def handler(
    ctx: JobContext, image_id: int, size: str = "small", ratio: float | None = None
) -> None:
    pass


def test_describe_params() -> None:
    d = describe_params(handler)
    assert d["var_keyword"] is False
    assert d["params"] == [
        {"name": "image_id", "required": True, "types": ["integer"]},
        {"name": "size", "required": False, "types": ["string"]},
        {"name": "ratio", "required": False, "types": ["integer", "null", "number"]},
    ]


def test_valid_args_pass() -> None:
    validate_args("resize", describe_params(handler), {"image_id": 7, "ratio": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing required 'image_id'"),
        ({"image_id": 1, "colour": "red"}, "unexpected 'colour'"),
        ({"image_id": "seven"}, "'image_id' must be integer, got string"),
        ({"image_id": True}, "'image_id' must be integer, got boolean"),
    ],
)
def test_bad_args_name_the_problem(args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArguments, match=message):
        validate_args("resize", describe_params(handler), args)


def test_var_keyword_accepts_anything() -> None:
    def anything(ctx: JobContext, **kw: Any) -> None:
        pass

    validate_args("x", describe_params(anything), {"whatever": 1})


def test_unknown_task_lists_known() -> None:
    with pytest.raises(UnknownTask, match=r"unknown task 'resise'.*registered resize"):
        check_known("resise", {"resize": {}})


def test_app_rejects_duplicates_and_missing_ctx() -> None:
    app = App()
    app.task(handler)
    with pytest.raises(ValueError, match="registered twice"):
        app.task(name="handler")(handler)
    with pytest.raises(TypeError, match="JobContext"):
        app.task(lambda: None)
