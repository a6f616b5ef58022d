"""The role's scanner switch without a VM: the policy it writes carries the scanner block and
validates with checks switched on; without the switch the policy is written as given."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "netpolicy"


def _render(**variables: Any) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True, keep_trailing_newline=True)
    env.filters["to_nice_yaml"] = lambda data, indent=2, width=1000, sort_keys=False: yaml.safe_dump(
        data, indent=indent, width=width, sort_keys=sort_keys, default_flow_style=False)
    env.filters["combine"] = lambda base, extra: {**base, **extra}  # Ansible's, for two flat mappings
    return env.get_template("policy.yml.j2").render(ansible_managed="Ansible managed", **variables)


def _policy() -> dict[str, Any]:
    policy = yaml.safe_load((ROOT / "ansible" / "group_vars" / "mx.yml").read_text())["netpolicy_policy"]
    policy["mail_flow_policies"]["ACCEPTED"].update(spam_check=True, virus_check=True, dmarc=True)
    return dict(policy)


def test_the_scanner_switch_adds_the_block_and_the_policy_validates(tmp_path: Path) -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    path = tmp_path / "policy.yml"
    path.write_text(_render(netpolicy_policy=_policy(), netpolicy_scanner=True, netpolicy_scanner_block=defaults["netpolicy_scanner_block"]))
    assert yaml.safe_load(path.read_text())["scanner"] == {"rspamd": "http://127.0.0.1:11333", "timeout": 20, "on_error": "tempfail"}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "netpolicy"), "validate", "-p", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_the_switch_checks_need_a_scanner_block(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(_render(netpolicy_policy=_policy(), netpolicy_scanner=False))
    assert "scanner" not in yaml.safe_load(path.read_text())
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "netpolicy"), "validate", "-p", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "spam_check needs a scanner block" in proc.stderr, proc.stderr
