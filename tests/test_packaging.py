"""An installed wheel works from anywhere and carries its templates and playbooks."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path


def test_wheel_installs_and_finds_its_data(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(repo)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("piml-*.whl")
    # Reuse the test environment's packages for the dependencies (the test is about piml's own files): a .pth
    # line puts its site-packages after the new venv's own. Paths named in a .pth are not scanned for .pth
    # files themselves, so the editable piml installed there stays out of sight; only the wheel's is found.
    # (system_site_packages would reach the base interpreter's packages, not this environment's.)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin/python"
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(own_site) / "test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import piml, piml.paths as p; print(piml.__file__); print(p.templates_dir()); print(p.playbooks_dir())"
    out = subprocess.run(
        [str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, check=True, timeout=60
    )
    module, templates, playbooks = out.stdout.split()
    assert str(env_dir) in module and str(repo) not in module
    assert templates.startswith(str(env_dir)) and templates.endswith("piml/_data/templates")
    assert playbooks.endswith("piml/_data/playbooks")
    cli = subprocess.run(
        [str(env_dir / "bin/piml"), "init", "p", "-n", "a=10.0.0.1"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert (elsewhere / "p/inventory/hosts.yml").is_file()


def test_the_full_test_extra_runs_the_services_at_the_versions_piml_pins():
    """tests/services.py runs MLflow, Ray and Dask from the `test` extra: at another version than the cluster's
    they would prove nothing about it."""
    import re
    import tomllib

    from piml.config import DASK_VERSION, MLFLOW_VERSION, RAY_VERSION

    repo = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = {m[1]: m[2] for m in (re.match(r"^([a-z]+)(?:\[[a-z,]+\])?(\S*)$", d) for d in extra) if m}
    assert pins.get("ray") == f"=={RAY_VERSION}"
    assert pins.get("distributed") == f"=={DASK_VERSION}"
    assert pins.get("mlflow", "").endswith(f",<={MLFLOW_VERSION}")  # never newer than the cluster's
