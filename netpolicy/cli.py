"""``netpolicy`` command line: one thin layer over the library (SPEC.md section 4).

Commands parse arguments, call the library and print; they hold no policy logic. Every command
that reads a policy takes ``-p/--policy`` (or ``NETPOLICY_POLICY``); a broken policy prints
``file:line: message`` lines to stderr and exits 1 before anything else happens.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from netpolicy.compiler import compile_listener, compile_policy
from netpolicy.hat import HatIndex, build_groups
from netpolicy.policy import DEFAULT_POLICY_PATH, Policy, PolicyError, load_policy
from netpolicy.policy.entries import EntryError, address_to_int
from netpolicy.policy.hat_import import import_hat
from netpolicy.policy.model import Policy as PolicyModel

console = Console()
err_console = Console(stderr=True)

policy_option = click.option(
    "-p",
    "--policy",
    "policy_path",
    envvar="NETPOLICY_POLICY",
    default=DEFAULT_POLICY_PATH,
    show_default=True,
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="Policy file.",
)


def load_or_exit(path: str) -> Policy:
    """Load the policy or print every problem as ``file:line: message`` and exit 1."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netpolicy")
def cli() -> None:
    """Mail flow policies for Linux mail gateways, with TCPREFUSE in the kernel."""


@cli.command()
@policy_option
def validate(policy_path: str) -> None:
    """Parse and check the policy; exit 1 listing every error with its line."""
    policy = load_or_exit(policy_path)
    groups = sum(len(entries) for entries in policy.sender_groups.values())
    click.echo(
        f"{policy_path}: ok (generation {policy.generation()}, {len(policy.listeners)} listener(s), "
        f"{len(policy.sender_groups)} sender group(s), {groups} entries)"
    )


@cli.command()
@policy_option
@click.argument("address")
@click.option("--hostname", help="Verified reverse-DNS name of the host (as if FCrDNS succeeded).")
@click.option("--listener", "listener_name", help="Listener to trace on (default: the first).")
@click.option("--dnslisted", "zones", multiple=True, metavar="ZONE", help="Treat the host as listed in ZONE (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (SPEC.md section 4).")
def trace(policy_path: str, address: str, hostname: str | None, listener_name: str | None, zones: tuple[str, ...], as_json: bool) -> None:
    """Which sender group, entry, policy and behaviour ADDRESS gets, and where it is enforced."""
    policy = load_or_exit(policy_path)
    try:
        family, value = address_to_int(address.strip())
    except EntryError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    try:
        listener = policy.listener(listener_name) if listener_name else policy.listeners[0]
    except KeyError:
        names = ", ".join(lst.name for lst in policy.listeners)
        raise click.BadParameter(f"no listener {listener_name!r} (listeners: {names})", param_hint="--listener") from None
    decision = HatIndex(policy, listener, build_groups(policy)).decide(
        address.strip(), hostname=hostname, dnslisted=lambda zone: zone in zones
    )
    in_kernel = decision.behavior == "tcprefuse" and compile_listener(policy, listener).refuses(family, value)
    result = {
        "listener": listener.name,
        "address": decision.address,
        "sender_group": decision.sender_group,
        "match": decision.match,
        "policy": decision.policy.name,
        "behavior": decision.behavior,
        "enforced_in": "kernel" if in_kernel else "userland",
    }
    if as_json:
        print_json(result)
        return
    table = Table(show_header=False, box=None)
    for key, value_text in result.items():
        table.add_row(key.replace("_", " "), str(value_text))
    console.print(table)


@cli.command(name="compile")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON (SPEC.md section 4).")
def compile_cmd(policy_path: str, as_json: bool) -> None:
    """The kernel plan for each listener: refuse sets and userland-only entries."""
    plan = compile_policy(load_or_exit(policy_path))
    if as_json:
        print_json(plan.as_json())
        return
    console.print(f"policy generation [bold]{plan.generation}[/bold]")
    for lp in plan.listeners:
        mode = "kernel" if lp.kernel else "userland only (kernel: false)"
        console.print(f"\n[bold]{lp.name}[/bold] {lp.address} port {lp.port}: {mode}")
        table = Table("set", "entries", "first entries")
        for label, cidrs in (("refuse4", lp.refuse4), ("refuse6", lp.refuse6)):
            shown = ", ".join(cidrs[:5]) + (f", … (+{len(cidrs) - 5})" if len(cidrs) > 5 else "")
            table.add_row(label, str(len(cidrs)), shown)
        console.print(table)
        if lp.userland_only:
            ut = Table("sender group", "entry", "userland only because")
            for u in lp.userland_only:
                ut.add_row(u.sender_group, u.entry, u.reason)
            console.print(ut)


@cli.command(name="import-hat")
@click.argument("export", type=click.File("r", encoding="utf-8"))
@click.option("--listener", "listener_name", default="IncomingMail", show_default=True, help="Name of the listener to create.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Listener address.")
@click.option("--port", default=2525, show_default=True, type=int, help="Listener port.")
@click.option("--hostname", default="localhost", show_default=True, help="Listener host name (banners).")
def import_hat_cmd(export: Any, listener_name: str, address: str, port: int, hostname: str) -> None:
    """Convert an appliance HAT export (EXPORT, or - for stdin) into a policy file on stdout."""
    try:
        click.echo(import_hat(export.read(), export.name, listener_name, address=address, port=port, hostname=hostname), nl=False)
    except ValueError as exc:  # HatImportError carries file:line
        click.echo(str(exc), err=True)
        sys.exit(1)


@cli.command()
def schema() -> None:
    """JSON Schema of the policy file."""
    print_json(PolicyModel.model_json_schema())


def main() -> None:
    cli(prog_name="netpolicy")
