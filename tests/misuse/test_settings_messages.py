"""piml.yaml values of the wrong kind (issue 16): one line per mistake, in the user's words, never pydantic's
internals ('nodes.pi5_4k_pages.bool', "literal['auto']", 'input should be ...')."""

from __future__ import annotations

import pytest

from piml.config import parse_config
from piml.errors import InputError
from piml.yamlsrc import parse_yaml

CASES = {
    "nodes: {pi5_4k_pages: maybe}": ("'nodes.pi5_4k_pages' is 'maybe'", "use true, false or 'auto'"),
    "nodes: {pi5_4k_pages: [1]}": ("'nodes.pi5_4k_pages' is [1]", "use true, false or 'auto'"),
    "queue: {retries: many}": ("'queue.retries' is 'many', not a whole number", "the default is 3"),
    "queue: {max_jobs: -1}": ("'queue.max_jobs' is -1", "give 1 or more"),
    "queue: {retries: 99}": ("'queue.retries' is 99", "give 20 or less"),
    "k3s: {disable: traefik}": ("'k3s.disable' is 'traefik', not a list", "[a, b]"),
    "mlflow: {enabled: yes please}": ("'mlflow.enabled' is 'yes please', not true or false", "write true or false"),
    "k3s: {wait_timeout: 1.5}": ("'k3s.wait_timeout' is 1.5, not a whole number", "the default is 180"),
}


@pytest.mark.parametrize("text", CASES)
def test_a_wrong_kind_of_value_is_one_plain_problem(text):
    with pytest.raises(InputError) as caught:
        parse_config(parse_yaml(text + "\n", "piml.yaml"))
    problems = caught.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    line = str(problems[0])
    assert line.startswith("piml.yaml:1: ")
    for words in CASES[text]:
        assert words in line, line
    for internal in (".bool", "literal[", "input should", "function-after", "[type="):
        assert internal not in line.lower(), line
