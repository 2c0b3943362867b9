"""An installed wheel works from anywhere and carries its templates and playbooks."""

import subprocess
import sys
import venv


def test_wheel_installs_and_finds_its_data(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(repo)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("piml-*.whl")
    # Reuse this interpreter's packages for the dependencies: the test is about piml's own files.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = env_dir / "bin/python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True, timeout=300, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import piml, piml.paths as p; print(piml.__file__); print(p.templates_dir()); print(p.playbooks_dir())")
    out = subprocess.run([str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, check=True, timeout=60)
    module, templates, playbooks = out.stdout.split()
    assert str(env_dir) in module and str(repo) not in module
    assert templates.startswith(str(env_dir)) and templates.endswith("piml/_data/templates")
    assert playbooks.endswith("piml/_data/playbooks")
    cli = subprocess.run([str(env_dir / "bin/piml"), "init", "p", "-n", "a=10.0.0.1"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert (elsewhere / "p/inventory/hosts.yml").is_file()
