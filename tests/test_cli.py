"""The command line as a user meets it: help, version, inventory commands, errors, start-up cost."""

import json
import subprocess
import sys

from piml import __version__

HEAVY = ("kubernetes", "ansible_runner", "fabric", "paramiko", "jinja2", "pydantic", "cryptography")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom piml.entry import main\nsys.argv=['piml','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "piml init" in out.stdout or "init" in out.stdout
    assert out.stdout.strip().endswith("HEAVY="), out.stdout[-300:]


def test_version(piml):
    out = piml("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"piml {__version__}"


def test_every_command_has_examples(piml):
    for command in (
        ["init"],
        ["inventory", "show"],
        ["inventory", "check"],
        ["up"],
        ["status"],
        ["plan"],
        ["render"],
        ["flash"],
    ):
        out = piml(*command, "--help")
        assert out.returncode == 0 and "Examples:\n    piml " in out.stdout and "[bold]" not in out.stdout, command


def test_inventory_show_json_and_table(piml, tmp_path):
    assert (
        piml("init", "p", "-n", "pi1=198.18.0.11", "-n", "pi2=198.18.0.12", "--model", "pi5", cwd=tmp_path).returncode
        == 0
    )
    out = piml("inventory", "show", "--json", "-C", "p", cwd=tmp_path)
    data = json.loads(out.stdout)
    assert data["nodes"][0] == {
        **data["nodes"][0],
        "name": "pi1",
        "address": "198.18.0.11",
        "role": "server",
        "user": "pi",
        "model": "pi5",
    }
    assert [n["role"] for n in data["nodes"]] == ["server", "agent"]
    table = piml("inventory", "show", cwd=tmp_path / "p").stdout
    assert "pi2" in table and "198.18.0.12" in table and "agent" in table


def test_inventory_commands_work_outside_a_project_with_i(piml, tmp_path, write):
    path = write("elsewhere/k3s.yml", "k3s_cluster:\n  children:\n    server:\n      hosts:\n        10.1.1.1:\n")
    out = piml("inventory", "show", "--json", "-i", str(path), cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout)["nodes"][0]["address"] == "10.1.1.1"


def test_check_reports_every_problem_exit_2(piml, tmp_path, write):
    write(
        "p/inventory/hosts.yml",
        "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1:\n          piml_model: pi9\n",
    )
    write("p/piml.yaml", "mlflw: {}\n")
    out = piml("inventory", "check", "-C", "p", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "error: p/inventory/hosts.yml:6: piml_model of 'pi1' is 'pi9'; did you mean 'pi5'?",
        "error: p/piml.yaml:1: unknown setting 'mlflw'; did you mean 'mlflow'?",
    ]


def test_yaml_syntax_error_exit_2_no_traceback(piml, tmp_path, write):
    write("hosts.yml", "k3s_cluster:\n  children: [\n")
    out = piml("inventory", "check", "-i", "hosts.yml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: hosts.yml:3: YAML syntax error")
    assert "Traceback" not in out.stderr


def test_missing_project(piml, tmp_path):
    out = piml("inventory", "show", cwd=tmp_path)
    assert out.returncode == 2 and "no inventory here" in out.stderr and "piml init" in out.stderr
    out = piml("inventory", "show", "-C", "nowhere", cwd=tmp_path)
    assert out.returncode == 2 and "'nowhere' is not a directory" in out.stderr


def test_usage_errors_exit_2(piml):
    assert piml("nosuchcommand").returncode == 2
    assert piml("init", "--bogus").returncode == 2
