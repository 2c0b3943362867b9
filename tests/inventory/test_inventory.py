"""The inventory: k3s-ansible's layout, Ansible's variable rules, and every validation error with its line."""

import subprocess

import pytest

from piml.errors import InputError
from piml.inventory import Role, load_inventory

K3S_ANSIBLE_SAMPLE = """
---
k3s_cluster:
  children:
    server:
      hosts:
        192.16.35.11:
    agent:
      hosts:
        192.16.35.12:
        192.16.35.13:

  # Required Vars
  vars:
    ansible_port: 22
    ansible_user: debian
    k3s_version: v1.30.2+k3s1
    token: "changeme!"
    api_endpoint: "{{ hostvars[groups['server'][0]]['ansible_host'] | default(groups['server'][0]) }}"
    extra_server_args: ""
    extra_agent_args: ""
    server_config_yaml:  |
      # This is now an inner yaml file. Maintain the indentation.
      # YAML here will be placed as the content of /etc/rancher/k3s/config.yaml
      write-kubeconfig-mode: "0644"
      disable:
        - servicelb
"""


def test_k3s_ansible_sample_reads_as_is(write):
    inv = load_inventory(write("hosts.yml", K3S_ANSIBLE_SAMPLE))
    assert [n.name for n in inv.nodes] == ["192.16.35.11", "192.16.35.12", "192.16.35.13"]
    assert [n.role for n in inv.nodes] == [Role.SERVER, Role.AGENT, Role.AGENT]
    assert all(n.address == n.name for n in inv.nodes)  # null hosts: the name is the address
    assert all(n.user == "debian" and n.port == 22 for n in inv.nodes)
    # The Jinja api_endpoint is understood, not evaluated: piml uses the first server.
    assert inv.api_endpoint == "192.16.35.11"
    assert inv.k3s_vars.k3s_version == "v1.30.2+k3s1" and inv.k3s_vars.api_port == 6443
    assert inv.warnings == ()


def test_literal_api_endpoint_wins(write):
    path = write("hosts.yml", K3S_ANSIBLE_SAMPLE.replace('api_endpoint: "{{', 'api_endpoint: "10.0.0.5" # "{{'))
    assert load_inventory(path).api_endpoint == "10.0.0.5"


def test_group_vars_apply_outer_to_inner_and_host_vars_win(write):
    path = write(
        "hosts.yml",
        """
        all:
          vars:
            ansible_user: outer
            piml_model: cm4
        k3s_cluster:
          vars:
            ansible_user: cluster
            piml_memory_gb: 4
          children:
            server:
              vars:
                piml_memory_gb: 8
              hosts:
                cp:
                  ansible_host: 10.0.0.1
                  piml_model: other
                  piml_arch: amd64
            agent:
              hosts:
                pi1: {ansible_host: 10.0.0.11, ansible_user: alice}
                pi2: {ansible_host: 10.0.0.12, piml_labels: {disk: nvme, "piml.io/zone": a}}
        ray_external:
          hosts:
            mac: {ansible_host: 10.0.0.50, piml_arch: arm64}
    """,
    )
    inv = load_inventory(path)
    cp, pi1, pi2, mac = inv.nodes
    assert (cp.user, cp.memory_gb, cp.model, cp.arch) == ("cluster", 8.0, "other", "amd64")
    assert (pi1.user, pi1.memory_gb, pi1.model, pi1.arch) == ("alice", 4.0, None, None)
    assert pi2.labels == {"disk": "nvme", "piml.io/zone": "a"}
    assert (mac.role, mac.arch, mac.user) == (Role.EXTERNAL, "arm64", None)
    assert inv.external == (mac,) and inv.cluster_nodes == (cp, pi1, pi2)


def test_pi_models_imply_arm64_and_taints_parse(write):
    path = write(
        "hosts.yml",
        """
        k3s_cluster:
          children:
            server:
              hosts:
                pi1:
                  ansible_host: pi1.lan
                  piml_model: PI5
                  piml_storage: nvme
                  piml_taints: ["dedicated=ml:NoSchedule", "gpu:NoExecute"]
    """,
    )
    (node,) = load_inventory(path).nodes
    assert (node.model, node.arch, node.storage) == ("pi5", "arm64", "nvme")
    assert [str(t) for t in node.taints] == ["dedicated=ml:NoSchedule", "gpu:NoExecute"]


def test_key_file_resolves_inventory_dir(write, tmp_path):
    path = write(
        "proj/inventory/hosts.yml",
        """
        k3s_cluster:
          children:
            server:
              hosts:
                pi1:
          vars:
            ansible_ssh_private_key_file: "{{ inventory_dir }}/../.piml/id_ed25519"
    """,
    )
    (node,) = load_inventory(path).nodes
    assert node.key_file == (tmp_path / "proj/inventory").resolve() / "../.piml/id_ed25519"


BROKEN = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1:
          ansible_host: 10.0.0.300
          piml_modle: pi5
        pi2:
          ansible_host: 10.0.0.2
          piml_model: pi6
    agent:
      hosts:
        pi2:
        Pi_3:
          ansible_port: 99999
        pi4:
          ansible_host: 10.0.0.2
          piml_arch: amd64
          piml_model: pi5
          piml_taints: ["x:Never"]
          piml_memory_gb: lots
          piml_labels: {"bad key!": v}
          piml_storage: floppy
          ansible_user: "two words"
  vars:
    server_config_yaml: |
      a: [
  hostz: {}
stray:
  hosts:
    lonely:
"""

EXPECTED_ERRORS = [
    ":6: '10.0.0.300' is not a valid address for 'pi1'; use an IPv4/IPv6 address",
    ":7: unknown piml variable 'piml_modle'; did you mean 'piml_model'?",
    ":8: host 'pi2' is in both agent and server; keep it in one role group",
    ":10: piml_model of 'pi2' is 'pi6'; did you mean 'pi5'?",
    ":14: node name 'Pi_3' is not a valid host name",
    ":15: ansible_port of 'Pi_3' must be a port number, not '99999'",
    ":17: 'pi4' and 'pi2' have the same address 10.0.0.2; give each node its own address",
    ":18: 'pi4' is a pi5 but piml_arch says amd64",
    ":20: taint 'x:Never' of 'pi4' is not KEY[=VALUE]:EFFECT",
    ":21: piml_memory_gb of 'pi4' must be a number of GB, not 'lots'",
    ":22: label 'bad key!: v' of 'pi4' is not a valid Kubernetes label",
    ":23: piml_storage of 'pi4' is 'floppy'",
    ":24: ansible_user of 'pi4' must be a user name",
    ":26: server_config_yaml is not valid YAML (its line 2)",
    ":28: unknown key 'hostz' in group 'k3s_cluster'; did you mean 'hosts'?",
    ":31: host 'lonely' is in none of the groups server, agent, ray_external",
]


def test_every_problem_is_reported_at_once_with_its_line(write):
    path = write("hosts.yml", BROKEN)
    with pytest.raises(InputError) as info:
        load_inventory(path, "hosts.yml")
    lines = [str(p) for p in info.value.problems]
    for expected in EXPECTED_ERRORS:
        assert any(
            line.startswith("hosts.yml" + expected.split(" ", 1)[0]) and expected.split(" ", 1)[1] in line
            for line in lines
        ), f"missing {expected!r} in {lines}"
    assert len(lines) == len(EXPECTED_ERRORS), lines
    assert all(";" in line for line in lines)  # every error says how to fix it


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the inventory is empty"),
        ("- a\n- b\n", "must be a mapping of groups"),
        ("k3s_cluster:\n  children:\n    agent:\n      hosts:\n        a1:\n", "no server: k3s needs at least one"),
        ("k3s_cluster:\n  children:\n    server:\n      hosts: [a, b]\n", "is a list"),
        (
            "k3s_cluster:\n  children:\n    server:\n      hosts:\n        a:\n          ansible_host: '{{ x }}'\n",
            "is a Jinja template",
        ),
    ],
)
def test_structural_errors(write, text, message):
    with pytest.raises(InputError, match=message):
        load_inventory(write("hosts.yml", text))


def test_even_number_of_servers_is_a_warning(write):
    inv = load_inventory(
        write(
            "hosts.yml",
            """
        k3s_cluster:
          children:
            server:
              hosts: {s1: , s2: }
    """,
        ),
        "hosts.yml",
    )
    (warning,) = inv.warnings
    assert warning.warning and str(warning).startswith("hosts.yml:3: warning: 2 servers")


def test_ansible_reads_the_sample_too(write):
    """Our reading agrees with Ansible's own on which host is in which group."""
    import json

    path = write("hosts.yml", K3S_ANSIBLE_SAMPLE)
    out = subprocess.run(
        ["ansible-inventory", "-i", str(path), "--list"], capture_output=True, text=True, timeout=60, check=True
    )
    listed = json.loads(out.stdout)
    inv = load_inventory(path)
    assert listed["server"]["hosts"] == [n.name for n in inv.servers]
    assert listed["agent"]["hosts"] == [n.name for n in inv.agents]


@pytest.mark.parametrize("name", ["pi5-rack.yml", "k3s-ansible.yml"])
def test_shipped_examples_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "inventory/examples" / name
    assert load_inventory(path).servers


K3S_VARS_BASE = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {ansible_host: 10.0.0.1}
  vars:
"""


@pytest.mark.parametrize(
    "line, words",
    [
        ("k3s_version: 1.30", ("hosts.yml:7:", "`k3s_version` is the number 1.3", "quotes")),
        ("k3s_version: v1.30", ("hosts.yml:7:", "not a k3s release", "v1.36.3+k3s1")),
        ('k3s_version: \'{{ lookup("env", "V") }}\'', ("hosts.yml:7:", "Jinja template")),
        ("api_port: '{{ my_port }}'", ("hosts.yml:7:", "`api_port` is a Jinja template", "6443")),
        ("api_port: 70000", ("hosts.yml:7:", "`api_port` is 70000")),
        ("api_port: true", ("hosts.yml:7:", "`api_port` is True")),
        ("token: 12345", ("hosts.yml:7:", "`token` is the number 12345", "quotes")),
        ("token: '{{ vault_token }}'", ("hosts.yml:7:", "`token` is a Jinja template")),
        ("airgap_dir: [a, b]", ("hosts.yml:7:", "`airgap_dir` is ['a', 'b'], not text")),
        ("extra_server_args: [--a, --b]", ("hosts.yml:7:", "`extra_server_args`", "not text")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_k3s_ansible_variables_piml_reads_are_typed(write, line, words):
    """k3s_version: 1.30 passed and reached the installer as 1.3; api_port as a template ended as an internal error."""
    with pytest.raises(InputError) as caught:
        load_inventory(write("hosts.yml", K3S_VARS_BASE + "    " + line + "\n"))
    (problem,) = caught.value.problems
    for word in words:
        assert word in str(problem), str(problem)


def test_k3s_ansible_variables_as_they_should_be(write):
    inv = load_inventory(
        write(
            "hosts.yml",
            K3S_VARS_BASE + "    k3s_version: v1.36.3+k3s1\n    api_port: '6444'\n"
            "    token: s3cret\n    api_endpoint: '{{ hostvars[groups.server[0]].ansible_host }}'\n",
        )
    )
    k3s = inv.k3s_vars
    assert (k3s.k3s_version, k3s.api_port, k3s.token) == ("v1.36.3+k3s1", 6444, "s3cret")
    assert inv.api_endpoint == "10.0.0.1"  # the template is Ansible's: piml uses the first server
