"""``netpolicy`` command line: one thin layer over the library (SPEC.md section 4).

Commands parse arguments, call the library and print; they hold no policy logic. Every command
that reads a policy takes ``-p/--policy`` (or ``NETPOLICY_POLICY``); a broken policy prints
``file:line: message`` lines to stderr and exits 1 before anything else happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from netpolicy.model import DEFAULT_POLICY_PATH

if TYPE_CHECKING:
    from netpolicy.kernel import KernelDiff
    from netpolicy.model import Policy

# Each command imports what it needs in its own body: the pydantic model costs ~130 ms to build,
# rich ~30 ms, the kernel layer ~20 ms, and `schema` or `flush` need none of them.
# The kernel's own list (netpolicy.kernel.BACKENDS; a test keeps the two equal).
BACKENDS = ("auto", "nftables", "iptables")

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
    from netpolicy.model.loader import PolicyError, load_policy

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
    """Parse and check the policy; exit 1 listing every error with its line.

    Each file: list and country[...] entry is listed with the ranges it holds, so a list that
    read empty or a country the database has no address for shows before it is applied."""
    from netpolicy.model.entries import AddressSetEntry

    policy = load_or_exit(policy_path)
    groups = sum(len(entries) for entries in policy.sender_groups.values())
    lines = [
        f"{policy_path}: ok (generation {policy.generation()}, {len(policy.listeners)} listener(s), "
        f"{len(policy.sender_groups)} sender group(s), {groups} entries)"
    ]
    for name, entries in policy.sender_groups.items():
        for entry in entries:
            if isinstance(entry, AddressSetEntry):
                empty = "" if entry.v4 or entry.v6 else ": no address"
                lines.append(f"  {name}: {entry.text}: {len(entry.v4)} IPv4 and {len(entry.v6)} IPv6 ranges{empty}")
    click.echo("\n".join(lines))


@cli.command()
@policy_option
@click.argument("address")
@click.option("--hostname", help="Verified reverse-DNS name of the host (as if FCrDNS succeeded).")
@click.option("--listener", "listener_name", help="Listener to trace on (default: the first).")
@click.option("--listed", "--dnslisted", "zones", multiple=True, metavar="ZONE[=ANSWER]",
              help="Treat DNS list ZONE as answering ANSWER for the host (default 127.0.0.2; repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (SPEC.md section 4).")
def trace(policy_path: str, address: str, hostname: str | None, listener_name: str | None, zones: tuple[str, ...], as_json: bool) -> None:
    """Which sender group, entry, policy and behaviour ADDRESS gets, and where it is enforced.

    With a reputation block, also the score the --listed answers give (0 when no list lists the
    host; trace has no failed lookups, so never none); with a geoip block, the address's country."""
    from netpolicy.model.compiler import compile_listener
    from netpolicy.model.entries import EntryError, address_to_int
    from netpolicy.model.hat import HatIndex, build_groups
    from netpolicy.model.references import MESSAGE_CHECKS

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
    answers: dict[str, list[str]] = {}
    for item in zones:
        zone, _, answer = item.partition("=")
        answers.setdefault(zone.strip().lower().rstrip("."), []).append(answer.strip() or "127.0.0.2")
    decision = HatIndex(policy, listener, build_groups(policy)).decide(
        address.strip(), hostname=hostname,
        dnslisted=lambda zone, pattern: any(pattern.matches(a) for a in answers.get(zone, ())),
    )
    in_kernel = decision.behavior == "tcprefuse" and compile_listener(policy, listener).refuses(family, value)
    result: dict[str, object] = {
        "listener": listener.name,
        "address": decision.address,
        "sender_group": decision.sender_group,
        "match": decision.match,
        "policy": decision.policy.name,
        "behavior": decision.behavior,
        "enforced_in": "kernel" if in_kernel else "userland",
    }
    if decision.scored:
        result["score"] = decision.score
    if policy.geoip is not None:
        result["country"] = decision.country
    if decision.behavior in ("accept", "relay"):  # the message checks its messages get (SPEC.md section 8)
        result["checks"] = [name for name in MESSAGE_CHECKS if getattr(decision.policy, name)]
    if as_json:
        print_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(show_header=False, box=None)
    for key, shown_value in result.items():
        shown = (", ".join(shown_value) or None) if isinstance(shown_value, list) else shown_value
        table.add_row(key.replace("_", " "), "none" if shown is None else str(shown))
    console.print(table)


@cli.command(name="compile")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON (SPEC.md section 4).")
def compile_cmd(policy_path: str, as_json: bool) -> None:
    """The kernel plan for each listener: refuse sets and userland-only entries."""
    from netpolicy.model.compiler import compile_policy

    plan = compile_policy(load_or_exit(policy_path))
    if as_json:
        print_json(plan.as_json())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"policy generation [bold]{plan.generation}[/bold]")
    for lp in plan.listeners:
        mode = "kernel" if lp.kernel else "userland only (kernel: false)"
        console.print(f"\n[bold]{lp.name}[/bold] {lp.address} port {lp.port}: {mode}")
        table = Table("set", "ranges", "first ranges")
        for label, ranges in (("refuse4", lp.refuse4), ("refuse6", lp.refuse6)):
            shown = ", ".join(map(str, ranges[:5])) + (f", … (+{len(ranges) - 5})" if len(ranges) > 5 else "")
            table.add_row(label, str(len(ranges)), shown)
        console.print(table)
        if lp.userland_only:
            ut = Table("sender group", "entry", "userland only because")
            for u in lp.userland_only:
                ut.add_row(u.sender_group, u.entry, u.reason)
            console.print(ut)


# -- kernel: diff, apply, status, flush (thin wrappers over netpolicy.kernel) ------------------

EXIT_DRIFT = 2
EXIT_NOPERM = 77  # sysexits.h EX_NOPERM: no CAP_NET_ADMIN

backend_option = click.option(
    "--backend",
    "backend_name",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Kernel backend (auto: nftables whenever nf_tables works, else legacy iptables).",
)

runtime_option = click.option(
    "--runtime-file", "runtime_file", envvar="NETPOLICY_RUNTIME_FILE", show_envvar=True, type=click.Path(dir_okay=False),
    help="Where serve --workers lists its workers for status [default: $RUNTIME_DIRECTORY/serve.json, "
         "/run/netpolicy/serve.json as root, else in $XDG_RUNTIME_DIR or /tmp].")
mail_log_option = click.option("--mail-log", "mail_log", type=click.Path(dir_okay=False),
                               help="Mail log file (default: standard error).")


@contextlib.contextmanager
def kernel_errors() -> Iterator[None]:
    """Kernel-layer failures as one line on stderr; a missing CAP_NET_ADMIN exits 77, others 1."""
    from netpolicy.kernel import KernelError, MissingCapability

    try:
        yield
    except MissingCapability as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOPERM)
    except KernelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


APPLY_SHOWN = 50


def print_diff(result: KernelDiff, as_json: bool, limit: int | None = None) -> None:
    """The diff as lines (all of them, or the first ``limit`` and a count)."""
    if as_json:
        print_json(result.as_json())
    elif result.in_sync:
        click.echo(f"in sync: generation {result.generation} ({result.backend})")
    else:
        lines = result.lines(None if limit is None else limit + 1)
        if limit is not None and len(lines) > limit:
            lines[limit:] = [f"... {result.element_changes} element changes in all (netpolicy diff lists every one)"]
        click.echo("\n".join(lines))  # one write: 100k echo calls took 0.25 s


@cli.command(name="diff")
@policy_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="The diff as one JSON object.")
def diff_cmd(policy_path: str, backend_name: str, as_json: bool) -> None:
    """Desired kernel state against the running kernel; exit 0 in sync, 2 on drift."""
    from netpolicy.kernel import select_backend
    from netpolicy.model.compiler import compile_policy

    plan = compile_policy(load_or_exit(policy_path))
    with kernel_errors():
        result = select_backend(backend_name).diff(plan)
    print_diff(result, as_json)
    sys.exit(0 if result.in_sync else EXIT_DRIFT)


@cli.command(name="apply")
@policy_option
@backend_option
@click.option("--check", is_flag=True, help="Change nothing; like diff: exit 0 in sync, 2 on drift.")
@click.option("--verbose", "-v", is_flag=True, help=f"Print every change (default: the first {APPLY_SHOWN} and a count).")
def apply_cmd(policy_path: str, backend_name: str, check: bool, verbose: bool) -> None:
    """Make the kernel match the policy, in one atomic transaction; print what changed.

    Only the first changes are printed unless ``--verbose``: formatting and writing a million
    lines took 12.9 s of a 26 s first apply of a 1M-entry list."""
    from netpolicy.kernel import select_backend
    from netpolicy.model.compiler import compile_policy

    plan = compile_policy(load_or_exit(policy_path))
    with kernel_errors():
        backend = select_backend(backend_name)
        result = backend.diff(plan) if check else backend.apply(plan)
    print_diff(result, as_json=False, limit=None if verbose else APPLY_SHOWN)
    if check:
        sys.exit(0 if result.in_sync else EXIT_DRIFT)
    if not result.in_sync:
        click.echo(f"applied: generation {plan.generation} ({result.backend}, {result.element_changes} element changes)")


@cli.command(name="status")
@policy_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Status as one JSON object.")
@click.option("--fleet", is_flag=True,
              help="Instead: the gateways sharing the policy's state store (listeners, generation, last seen). Exit 2 when "
                   "one runs another generation than this host's policy file or than the majority, 1 when the store "
                   "cannot be read.")
@runtime_option
def status_cmd(policy_path: str, backend_name: str, as_json: bool, fleet: bool, runtime_file: str | None) -> None:
    """Backend, policy generation, set sizes and refusal counters per listener; serve's workers."""
    if fleet:
        fleet_status(policy_path, as_json)
        return
    from netpolicy.daemon.workers import default_runtime_file, read_runtime
    from netpolicy.kernel import select_backend
    from netpolicy.model.compiler import compile_policy

    plan = compile_policy(load_or_exit(policy_path)) if os.path.exists(policy_path) else None
    with kernel_errors():
        backend = select_backend(backend_name)
        result = backend.status(plan)
        promoted = backend.promoted()
        learned = backend.learned()
    runtime = read_runtime(runtime_file or default_runtime_file())
    workers = [] if runtime is None else runtime["workers"]
    if as_json:
        print_json({**result.as_json(), **{kind: [
            {"listener": held.listener, "address": held.address, "expires_in": round(held.expires_in)} for held in hosts
        ] for kind, hosts in (("promoted", promoted), ("learned", learned))}, "workers": workers})
    else:
        for line in result.lines():
            click.echo(line)
        for kind, hosts in (("promoted", promoted), ("learned", learned)):
            for held in hosts:
                click.echo(f"{kind}: {held.address} on {held.listener} ({held.expires_in:.0f} s left)")
        for worker in workers:
            click.echo(worker_line(worker))


def worker_line(worker: dict[str, Any]) -> str:
    """One worker of serve --workers as status prints it."""
    import time

    if not worker.get("running"):
        return f"worker {worker.get('slot')}: starting (restarted {worker.get('restarts', 0)} times)"
    return (f"worker {worker.get('slot')}: pid {worker.get('pid')}, generation {worker.get('generation')}, "
            f"up {max(0.0, time.time() - float(worker.get('started') or 0)):.0f} s, {worker.get('connections', 0)} connections, "
            f"restarted {worker.get('restarts', 0)} times")


def fleet_status(policy_path: str, as_json: bool) -> None:
    """``status --fleet``: read every gateway's announcement (netpolicy.daemon.fleet)."""
    import asyncio
    import time

    from netpolicy.daemon.fleet import flags, majority, read_fleet
    from netpolicy.model.compiler import compile_policy
    from netpolicy.smtp.resp import StoreError

    policy = load_or_exit(policy_path)
    if policy.state is None:
        click.echo(f"{policy_path}: no state block, so no fleet to show", err=True)
        sys.exit(1)
    local = compile_policy(policy).generation
    try:
        gateways = asyncio.run(read_fleet(policy.state))
    except (OSError, StoreError) as exc:
        click.echo(f"state store {policy.state.redis}: {exc}", err=True)
        sys.exit(1)
    flagged = flags(gateways, local)
    now = time.time()
    if as_json:
        print_json({"policy_generation": local, "majority_generation": majority(gateways), "gateways": [
            {"host": g.host, "pid": g.pid, "listeners": g.listeners, "generation": g.generation, "started": g.started,
             "last_seen": g.last_seen, "workers": g.workers, "disagrees": flagged.get(g.name)} for g in gateways]})
    else:
        click.echo(f"{len(gateways)} gateways; this host's policy file is at generation {local}")
        for g in gateways:
            click.echo(f"{g.name}: generation {g.generation}, last seen {max(0.0, now - g.last_seen):.0f} s ago, "
                       f"up {max(0.0, now - g.started):.0f} s; listeners: {', '.join(g.listeners) or 'none'}")
            for worker in g.workers:
                click.echo(f"  {worker_line(worker)}")
            if g.name in flagged:
                click.echo(f"  DISAGREES: {flagged[g.name]}")
    sys.exit(EXIT_DRIFT if flagged else 0)


@cli.command(name="flush")
@backend_option
def flush_cmd(backend_name: str) -> None:
    """Remove everything netpolicy owns from the kernel (nothing else is touched)."""
    from netpolicy.kernel import select_backend

    with kernel_errors():
        backend = select_backend(backend_name)
        removed = backend.flush()
    click.echo(f"flushed netpolicy's {backend.name} objects" if removed else f"nothing of netpolicy's in {backend.name}")


@cli.command(name="import-hat")
@click.argument("export", type=click.File("r", encoding="utf-8"))
@click.option("--listener", "listener_name", default="IncomingMail", show_default=True, help="Name of the listener to create.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Listener address.")
@click.option("--port", default=2525, show_default=True, type=int, help="Listener port.")
@click.option("--hostname", default="localhost", show_default=True, help="Listener host name (banners).")
@click.option("--geoip-database", metavar="PATH",
              help="Country database (MaxMind DB) for the export's country entries [default: where geoipupdate puts GeoLite2-Country].")
def import_hat_cmd(export: Any, listener_name: str, address: str, port: int, hostname: str, geoip_database: str | None) -> None:
    """Convert an appliance HAT export (EXPORT, or - for stdin) into a policy file on stdout."""
    from netpolicy.model.hat_import import import_hat

    try:
        text = import_hat(export.read(), export.name, listener_name, address=address, port=port, hostname=hostname,
                          geoip_database=geoip_database)
        click.echo(text, nl=False)
    except ValueError as exc:  # HatImportError carries file:line
        click.echo(str(exc), err=True)
        sys.exit(1)


@cli.command()
@policy_option
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@mail_log_option
@click.option("--verbose-connections", is_flag=True, help="Log each kernel refusal as ICID 0 TCPREFUSE (via NFLOG).")
@click.option("--metrics", metavar="ADDR:PORT", help="Expose Prometheus metrics there.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60), help="Reconciler and file-watch interval (s).")
@click.option("--full-sync", "full_sync", metavar="SECONDS", default=300.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Read everything netpolicy owns in the kernel this often, not only set sizes (drift that keeps a set's size).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="SMTP worker processes on the same sockets (SO_REUSEPORT) beside one process for the kernel; "
                   "more than 1 needs the policy's state block.")
@runtime_option
def serve(policy_path: str, backend: str, mail_log: str | None, verbose_connections: bool, metrics: str | None, interval: float,
          full_sync: float, workers: int, runtime_file: str | None) -> None:
    """Listeners and kernel on one policy generation; SIGHUP or a file change reloads."""
    from netpolicy.daemon.serve import ServeOptions
    from netpolicy.daemon.serve import serve as run_daemon

    options = ServeOptions(policy_path, backend, mail_log, verbose_connections, metrics, interval, interval, full_sync,
                           workers, runtime_file)
    if workers == 1:
        sys.exit(run_daemon(options))
    from netpolicy.daemon.workers import serve_workers

    sys.exit(serve_workers(options))


@cli.command(name="serve-worker", hidden=True)
@policy_option
@mail_log_option
@click.option("--control", type=int, required=True, help="The control channel's file descriptor.")
@click.option("--slot", type=int, required=True)
@click.option("--first-id", "first_id", type=int, required=True)
@click.option("--id-step", "id_step", type=int, required=True)
@click.option("--kernel/--no-kernel", default=True)
def serve_worker(policy_path: str, mail_log: str | None, control: int, slot: int, first_id: int, id_step: int,
                 kernel: bool) -> None:
    """One SMTP worker of serve --workers (started by serve itself)."""
    from netpolicy.daemon.serve import ServeOptions
    from netpolicy.daemon.workers import run_worker

    sys.exit(run_worker(ServeOptions(policy_path, mail_log=mail_log), control, slot, first_id, id_step, kernel))


@cli.command()
def schema() -> None:
    """JSON Schema of the policy file."""
    from netpolicy.model.schema import schema_text

    click.echo(schema_text(), nl=False)


def main() -> None:
    cli(prog_name="netpolicy")
