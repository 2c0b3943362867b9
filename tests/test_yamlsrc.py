import pytest

from piml.errors import InputError
from piml.yamlsrc import parse_yaml, read_yaml


def test_lines_of_keys_and_items():
    doc = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", "f.yml")
    assert doc.data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert doc.where(("a", "b")) == "f.yml:2"
    assert doc.where(("a", "c", 1)) == "f.yml:5"
    assert doc.where(("a", "missing")) == "f.yml:1"  # nearest known parent


def test_merge_keys_are_applied():
    doc = parse_yaml("base: &b {x: 1}\nthing:\n  <<: *b\n  y: 2\n", "f.yml")
    assert doc.data["thing"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [\n", "f.yml:2: YAML syntax error"),
        ("a: 1\nb:\n  - x\n c: 2\n", "f.yml:4: YAML syntax error"),
        ("a: 1\na: 2\n", "f.yml:2: key 'a' appears twice"),
        ("x: &a [*a]\n", "an alias refers to itself"),
        ("? [1]\n: 2\n", "f.yml:1: a key is a list or mapping"),
        ("a: !!python/object:os.system x\n", "f.yml:1"),
        ("x: 2001-13-45\n", "bad YAML value"),
        ("\x07", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_located_error(text, expected):
    with pytest.raises(InputError) as info:
        parse_yaml(text, "f.yml")
    assert expected in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_yaml(tmp_path / "nope.yml")
    with pytest.raises(InputError, match="is a directory"):
        read_yaml(tmp_path)
    (tmp_path / "latin1.yml").write_bytes(b"a: \xe9\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_yaml(tmp_path / "latin1.yml")
