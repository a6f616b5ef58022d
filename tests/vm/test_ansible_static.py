"""The Ansible role, playbook and Vagrantfile without a VM: syntax, lint, templates, variables."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
ROLE = ANSIBLE / "roles" / "netpolicy"
BIN = ROOT / ".venv" / "bin"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


def _need(tool: Path | str) -> str:
    path = str(tool) if Path(str(tool)).exists() else shutil.which(str(tool))
    if not path:
        pytest.skip(f"{tool} is not installed (pip install -e '.[vm]' / make sysdeps)")
    return path


def test_playbook_syntax_check() -> None:
    exe = _need(BIN / "ansible-playbook")
    proc = subprocess.run([exe, "--syntax-check", "site.yml"], cwd=ANSIBLE, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile() -> None:
    exe = _need(BIN / "ansible-lint")
    proc = subprocess.run([exe, "--profile", "production", "--offline"], cwd=ANSIBLE, env=_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out, out


def test_vagrantfile_validates(tmp_path: Path) -> None:
    if shutil.which("vagrant"):
        env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DOTFILE_PATH=str(tmp_path / "vagrant"))
        has_libvirt = "vagrant-libvirt" in subprocess.run(["vagrant", "plugin", "list"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
        # Without a provider plugin installed, vagrant cannot check that provider's block.
        args = ["vagrant", "validate"] + ([] if has_libvirt else ["--ignore-provider"])
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Vagrantfile validated successfully" in proc.stdout
    elif shutil.which("ruby"):
        proc = subprocess.run(["ruby", "-c", "Vagrantfile"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    else:
        pytest.skip("neither vagrant nor ruby is installed (make sysdeps installs vagrant)")


def _render(name: str, **variables: object) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True, keep_trailing_newline=True)
    env.filters["to_nice_yaml"] = lambda data, indent=2, width=1000, sort_keys=False: yaml.safe_dump(
        data, indent=indent, width=width, sort_keys=sort_keys, default_flow_style=False, allow_unicode=True
    )
    env.filters["combine"] = lambda base, extra: {**base, **extra}  # Ansible's, for two flat mappings
    env.filters["bool"] = lambda value: str(value).lower() in ("true", "yes", "1")  # Ansible's, for the values used here
    return env.get_template(name).render(ansible_managed="Ansible managed", **variables)


def _defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def test_unit_template_matches_the_packaged_unit() -> None:
    """The role's unit, with default variables, is packaging/netpolicy.service line for line."""
    rendered = _render("netpolicy.service.j2", **_defaults())
    packaged = (ROOT / "packaging" / "netpolicy.service").read_text()
    strip = [line for line in rendered.splitlines() if not line.startswith(("# Ansible managed", "# From packaging/"))]
    assert strip == packaged.splitlines()
    with_backend = _render("netpolicy.service.j2", **{**_defaults(), "netpolicy_backend": "iptables", "netpolicy_mail_log": ""})
    assert "ExecStart=/opt/netpolicy/bin/netpolicy serve --backend iptables\n" in with_backend


def test_argument_specs_cover_every_default() -> None:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = _defaults()
    assert set(defaults) == set(specs)
    for name, value in defaults.items():
        if "{{" in str(value) or name == "netpolicy_policy":
            continue
        assert specs[name].get("default") == value, name


def _substituted(value: Any, facts: dict[str, str]) -> Any:
    """``value`` with each Jinja expression in ``facts`` replaced as Ansible would render it."""
    if isinstance(value, dict):
        return {k: _substituted(v, facts) for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, facts) for v in value]
    if isinstance(value, str):
        for expression, rendered in facts.items():
            value = value.replace(expression, rendered)
    return value


@pytest.mark.parametrize("source", ["role defaults", "group_vars/mx.yml"])
def test_shipped_policies_validate(source: str, tmp_path: Path) -> None:
    if source == "role defaults":
        facts = {
            "{{ ansible_facts['fqdn'] | default(inventory_hostname) }}": "mx.example.test",
            "{{ ansible_facts['domain'] | default('example.test', true) }}": "example.test",
        }
        policy = _substituted(_defaults()["netpolicy_policy"], facts)
    else:
        policy = yaml.safe_load((ANSIBLE / "group_vars" / "mx.yml").read_text())["netpolicy_policy"]
    path = tmp_path / "policy.yml"
    path.write_text(_render("policy.yml.j2", netpolicy_policy=policy))
    proc = subprocess.run([str(BIN / "netpolicy"), "validate", "-p", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_validate_rejects_a_broken_policy_with_file_and_line(tmp_path: Path) -> None:
    """What the template's `validate:` relies on: exit 1 and file:line on a broken policy."""
    policy = yaml.safe_load((ANSIBLE / "group_vars" / "mx.yml").read_text())["netpolicy_policy"]
    policy["mail_flow_policies"]["BLOCKED"]["behaviour"] = "tcprefuse"
    path = tmp_path / "policy.yml"
    path.write_text(_render("policy.yml.j2", netpolicy_policy=policy))
    proc = subprocess.run([str(BIN / "netpolicy"), "validate", "-p", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{path}:" in proc.stderr and "behaviour" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------ shared state
STATE_VARS = {"netpolicy_state_redis_url": "redis://10.20.0.10:6379/0", "netpolicy_state_prefix": "fleet:"}


def test_unit_template_runs_workers_after_the_local_store() -> None:
    rendered = _render("netpolicy.service.j2", **{**_defaults(), "netpolicy_workers": 4, "netpolicy_state_redis_install": True})
    assert "--mail-log /var/log/netpolicy/mail.log --workers 4\n" in rendered
    assert "\nAfter=redis-server.service\n" in rendered
    default = _render("netpolicy.service.j2", **_defaults())
    assert "ExecStart=/opt/netpolicy/bin/netpolicy serve --mail-log /var/log/netpolicy/mail.log\n" in default
    assert "redis" not in default


def test_policy_template_writes_the_state_block_when_a_url_is_set(tmp_path: Path) -> None:
    policy = yaml.safe_load((ANSIBLE / "group_vars" / "mx.yml").read_text())["netpolicy_policy"]
    path = tmp_path / "policy.yml"
    path.write_text(_render("policy.yml.j2", netpolicy_policy=policy, **STATE_VARS))
    assert yaml.safe_load(path.read_text())["state"] == {"redis": "redis://10.20.0.10:6379/0", "prefix": "fleet:"}
    proc = subprocess.run([str(BIN / "netpolicy"), "validate", "-p", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path.write_text(_render("policy.yml.j2", netpolicy_policy=policy, **{**STATE_VARS, "netpolicy_state_redis_url": ""}))
    assert "state" not in yaml.safe_load(path.read_text())


def _preflight(tmp_path: Path, **variables: object) -> subprocess.CompletedProcess[str]:
    """The role on localhost with tags nothing carries: only its `always` steps run, which are
    the argument validation and the workers check; nothing on this machine changes."""
    exe = _need(BIN / "ansible-playbook")
    play = [{"name": "Preflight", "hosts": "localhost", "connection": "local", "gather_facts": False,
             "roles": [{"role": "netpolicy", **variables}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {**_env(), "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_LOCALHOST_WARNING": "False"}
    return subprocess.run([exe, "-i", "localhost,", str(tmp_path / "play.yml"), "--tags", "preflight-only"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("variables", "message"), [
    ({"netpolicy_workers": "many"}, "argument 'netpolicy_workers' is of type str and we were unable to convert to int"),
    ({"netpolicy_state_redis_port": "six"}, "argument 'netpolicy_state_redis_port' is of type str"),
    ({"netpolicy_state_redis_protected_mode": "perhaps"}, "argument 'netpolicy_state_redis_protected_mode' is of type str"),
    ({"netpolicy_workers": 2}, "more than one worker needs a shared state store"),
    ({"netpolicy_workers": 0}, "netpolicy_workers is 0"),
])
def test_bad_state_variables_fail_before_any_change(tmp_path: Path, variables: dict[str, object], message: str) -> None:
    proc = _preflight(tmp_path, **variables)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert message in out, out
    assert "changed=0" in out, out


@pytest.mark.parametrize("variables", [
    {"netpolicy_workers": 2, "netpolicy_state_redis_url": "redis://10.20.0.10:6379/0"},
    {"netpolicy_workers": 2, "netpolicy_state_redis_install": True},
    {"netpolicy_workers": 1},
])
def test_workers_with_a_store_pass_the_check(tmp_path: Path, variables: dict[str, object]) -> None:
    proc = _preflight(tmp_path, **variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: [localhost]" in proc.stdout.split("Check that several workers share a state store")[1], proc.stdout


def test_example_inventory_points_both_gateways_at_the_store_on_mx1() -> None:
    """debug is an action on the controller: the inventory's variables, rendered, without SSH."""
    exe = _need(BIN / "ansible")
    shown = "{{ netpolicy_state_redis_url }} {{ netpolicy_state_redis_install | default(false) }} {{ netpolicy_workers }}"
    proc = subprocess.run([exe, "mx", "-m", "ansible.builtin.debug", "-a", f"msg='{shown}'"],
                          cwd=ANSIBLE, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'mx1.example.test | SUCCESS => {\n    "msg": "redis://10.20.0.10:6379/0 True 2"' in proc.stdout, proc.stdout
    assert 'mx2.example.test | SUCCESS => {\n    "msg": "redis://10.20.0.10:6379/0 False 2"' in proc.stdout, proc.stdout
