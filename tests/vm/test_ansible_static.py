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
