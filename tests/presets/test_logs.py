"""configure_logging: JSON lines with the bound request fields, or the plain text format."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from presets.logs import bind, configure_logging
from presets.settings import load_settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_what_the_task_bound(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(load_settings(log_format="json", log_level="INFO"))
    logger = logging.getLogger("tests.logs")

    async def request() -> None:
        bind(request_id="chatcmpl-1", model="m1", started_s=0.0)
        logger.info("inside %s", "the request")

    async def main() -> None:
        logger.info("before")
        # Tasks copy the context: what one request binds stays with it.
        await asyncio.create_task(request())
        logger.warning("after")

    asyncio.run(main())
    before, inside, after = _lines(capsys.readouterr().err)
    assert before["message"] == "before" and "request_id" not in before
    assert inside["message"] == "inside the request"
    assert inside["request_id"] == "chatcmpl-1" and inside["model"] == "m1"
    assert isinstance(inside["elapsed_ms"], float)
    assert inside["level"] == "INFO" and inside["logger"] == "tests.logs"
    assert str(inside["timestamp"]).endswith("Z")
    assert after["level"] == "WARNING" and "request_id" not in after


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_keep_a_traceback_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(load_settings(log_format="json"))
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("tests.logs").exception("it failed")
    (line,) = _lines(capsys.readouterr().err)
    assert "ValueError: broken" in str(line["exc_info"])


@pytest.mark.usefixtures("restore_logging")
def test_text_is_the_default_and_takes_over_arqs_handler(capsys: pytest.CaptureFixture[str]) -> None:
    arq_logger = logging.getLogger("arq")
    arq_logger.addHandler(logging.StreamHandler())
    arq_logger.propagate = False
    configure_logging(load_settings())
    arq_logger.info("job started")
    err = capsys.readouterr().err
    assert err.count("job started") == 1
    assert " INFO arq: job started" in err
    assert not err.lstrip().startswith("{")
