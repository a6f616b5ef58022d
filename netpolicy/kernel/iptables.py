"""The iptables backend, for legacy (x_tables) systems.

Owned objects: the chain ``NETPOLICY`` in the ``filter`` table (IPv4 and, when a listener
receives IPv6, IPv6), one jump to it from ``INPUT``, and ipsets whose names begin with
``netpolicy``: per listener and family a ``hash:net`` refuse set (``netpolicy-<id>-r4``), and
``hash:ip`` sets with timeouts for promoted hosts (``netpolicy-<id>-p4``) and learned refusals
(``netpolicy-<id>-l4``, see netpolicy.kernel.learning). Per set one rule::

    -A NETPOLICY [-d A] -p tcp --dport P --tcp-flags FIN,SYN,RST,ACK SYN
       -m set --match-set netpolicy-<id>-r4 src -m comment --comment "netpolicy <id> refuse4 gen=G"
       -j REJECT --reject-with tcp-reset

python-iptables (libiptc) edits the chain, its rules and the jump under the xtables lock, and
each table is committed as one unit. Set contents go through ``ipset restore``: element changes
in place for small changes, a filled temporary set swapped in for big ones, so the rules always
see either the old or the new set. A process that has applied before trusts its record of the
sets' contents (ipset has no generation counter, and counting a set's entries walks all its
buckets); its element changes are then strict, so a wrong record shows as a failed add or del
and the apply starts again from a full read (see ``_read``). Only the legacy backend uses
python-iptables: on systems where ``iptables`` is iptables-nft, libiptc writes legacy tables the
admin's tools do not show, which is why ``auto`` never picks this backend there.

What to change in the sets is worked out by the backend-neutral engine (netpolicy.kernel.engine);
this module reads and writes libiptc and ipset.

Verbose connection logging (NFLOG) is not offered here: python-iptables 1.2 corrupts memory
when an NFLOG target is given a prefix (it segfaults on the next rule), and the prefix is what
names the listener.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import ipaddress
import os
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netpolicy.kernel import ipset
from netpolicy.kernel.base import Backend, serialized
from netpolicy.kernel.engine import (
    DataplaneCache,
    SetNames,
    SetRecord,
    compare_objects,
    element_delta,
    listener_statuses,
    missing_timed_set,
    promotion_set,
    timed_sets,
)
from netpolicy.kernel.layout import (
    OwnedSet,
    layout,
    rule_comment,
    split_comment,
)
from netpolicy.kernel.learning import MAX_LEARNED
from netpolicy.kernel.values import (
    KernelDiff,
    KernelError,
    KernelStatus,
    LearnedRefusal,
    MissingCapability,
    Problem,
    Promotion,
    SetDelta,
    role_label,
)
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan

CHAIN = "NETPOLICY"
XT_LOCK_PATH = "/run/xtables.lock"
MIN_MAXELEM = 65536
RELOAD_THRESHOLD = 50_000  # reload rather than read back a set this big whose size changed
_THREAD_LOCK = threading.Lock()  # python-iptables keeps one handle per table for the process

Norm = tuple[Any, ...]


NAMES = SetNames("netpolicy-{lid}-{kind}{family}", ("refuse", "promoted", "learned"))  # netpolicy-<id>-r4, ...
TIMED = ("promoted", "learned")  # hash:ip sets with timeouts, filled at runtime


def temp_name(name: str) -> str:
    """Where a set is filled before being swapped in (still a ``netpolicy`` name: ours)."""
    return "netpolicy~" + name.removeprefix("netpolicy-")


def iptables_is_nft() -> bool:
    """Whether ``iptables`` on this system is the nf_tables variant (``iptables -V``)."""
    try:
        out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return False
    return "nf_tables" in out


@contextlib.contextmanager
def xtables_lock(timeout: float = 10.0) -> Iterator[None]:
    """The lock every iptables tool takes (flock on /run/xtables.lock) around table changes."""
    with _THREAD_LOCK:
        fd = os.open(XT_LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise KernelError(f"another program holds the xtables lock ({XT_LOCK_PATH})") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


def _point_at_libraries() -> None:
    """Tell python-iptables where its libraries are: otherwise each import probes for them
    with ldconfig and compilers in subprocesses (over a second on a busy machine)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    libdirs = [d for d in (f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib") if os.path.isdir(d)]
    spec = importlib.util.find_spec("iptc")
    if spec and spec.origin:  # libxtwrapper sits next to the package
        libdirs.append(os.path.dirname(os.path.dirname(spec.origin)))
    os.environ.setdefault("IPTABLES_LIBDIR", ":".join(libdirs))
    for libdir in libdirs:
        if os.path.isdir(os.path.join(libdir, "xtables")):
            os.environ.setdefault("XTABLES_LIBDIR", os.path.join(libdir, "xtables"))
            break


def _iptc() -> Any:
    if "iptc" not in sys.modules:
        _point_at_libraries()
    try:
        import iptc
    except Exception as exc:  # the library raises assorted errors when libiptc is missing
        raise KernelError(f"python-iptables is unusable here: {exc}") from exc
    # Building or reading any non-standard target (REJECT, a jump) makes python-iptables open
    # every table it knows to look for a chain of that name, and opening a legacy table
    # instantiates it: nat, mangle, raw and security would appear in the namespace. Telling it
    # in advance that only filter exists keeps us to the one table we own a chain in.
    for table_cls in (iptc.Table, iptc.Table6):
        table_cls.existing_table_names.update({name: name == "filter" for name in table_cls.ALL})
    return iptc


@contextlib.contextmanager
def _table(family: int) -> Iterator[Any]:
    """A fresh libiptc handle on ``filter`` for ``family``, opened in the calling thread (so
    in its network namespace); uncommitted changes are dropped when the block ends."""
    iptc = _iptc()
    try:
        table = iptc.Table(iptc.Table.FILTER) if family == 4 else iptc.Table6(iptc.Table6.FILTER)
        table.autocommit = False
        table.refresh()
    except iptc.IPTCError as exc:
        if "Permission denied" in str(exc) or "not permitted" in str(exc):
            raise MissingCapability(f"libiptc: {exc}") from exc
        raise KernelError(f"legacy iptables ({'ip' if family == 4 else 'ip6'}_tables) is unavailable: {exc}") from exc
    try:
        yield table
    finally:
        table.close()


def _params(params: dict[str, list[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((k, tuple(v)) for k, v in params.items()))


def _net(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def normalize(rule: Any) -> Norm:
    """A comparable form of a libiptc rule: addresses, protocol, interfaces, matches, target."""
    matches = tuple((m.name, _params(m.get_all_parameters())) for m in rule.matches)
    target = rule.target
    return (
        _net(rule.src), _net(rule.dst), rule.protocol, rule.in_interface, rule.out_interface,
        matches, target.name if target else "", _params(target.get_all_parameters()) if target else (),
    )


@dataclass(frozen=True)
class RuleSpec:
    """One rule we want in NETPOLICY."""

    key: str
    family: int
    daddr: str | None
    port: int
    set_name: str
    comment: str

    def normalized(self) -> Norm:
        any_net = "0.0.0.0/0" if self.family == 4 else "::/0"
        dst = _net(self.daddr) if self.daddr else any_net
        matches = (
            ("tcp", _params({"dport": [str(self.port)], "tcp-flags": ["FIN,SYN,RST,ACK", "SYN"]})),
            ("set", _params({"match-set": [self.set_name, "src"]})),
            ("comment", _params({"comment": [self.comment]})),
        )
        return (any_net, dst, "tcp", None, None, matches, "REJECT", _params({"reject-with": ["tcp-reset"]}))

    def build(self) -> Any:
        iptc = _iptc()
        rule = iptc.Rule() if self.family == 4 else iptc.Rule6()
        rule.protocol = "tcp"
        if self.daddr:
            rule.dst = self.daddr
        tcp = rule.create_match("tcp")
        tcp.dport = str(self.port)
        tcp.tcp_flags = ["FIN,SYN,RST,ACK", "SYN"]
        rule.create_match("set").match_set = [self.set_name, "src"]
        rule.create_match("comment").comment = self.comment
        rule.target = rule.create_target("REJECT")
        rule.target.reject_with = "tcp-reset"
        return rule


@dataclass(frozen=True)
class IptWantSet(OwnedSet):
    refuse: tuple[Interval, ...]  # the plan's refuse list (empty for timed sets)

    @property
    def type(self) -> str:
        return "hash:net" if self.kind == "refuse" else "hash:ip"

    @property
    def ipset_family(self) -> str:
        return "inet" if self.family == 4 else "inet6"


@dataclass
class IptDesired:
    sets: dict[str, IptWantSet] = field(default_factory=dict)
    rules: dict[int, list[RuleSpec]] = field(default_factory=lambda: {4: [], 6: []})


def desired(plan: KernelPlan) -> IptDesired:
    want = IptDesired()
    for ll in layout(plan):
        for family in ll.families:
            for kind in ("refuse", *TIMED):
                name = NAMES.name(kind, ll.lid, family)
                refuse = ll.refuse(family) if kind == "refuse" else ()
                want.sets[name] = IptWantSet(name, ll.lid, ll.name, kind, family, refuse)
                key = ll.rule_key(kind, family)
                want.rules[family].append(RuleSpec(key, family, ll.daddr(family), ll.port, name, rule_comment(key, plan.generation)))
    return want


def _blocks(iv: Interval) -> list[Interval]:
    """A plan range as hash:net entries: its CIDR blocks, a /0 as two halves (hash:net has no /0)."""
    if iv.first == 0 and iv.last == iv.max_address:
        half = iv.max_address >> 1
        return [Interval(iv.version, 0, half), Interval(iv.version, half + 1, iv.max_address)]
    return iv.blocks()


def _hash_net(intervals: Iterable[Interval]) -> frozenset[Interval]:
    return frozenset([block for iv in intervals for block in _blocks(iv)])


@functools.lru_cache(maxsize=8)
def ipset_intervals(refuse: tuple[Interval, ...]) -> frozenset[Interval]:
    """The entries a hash:net set holds for a refuse list (cached: plans are immutable and
    re-applied)."""
    return _hash_net(refuse)


def _entry(iv: Interval) -> str:
    (cidr,) = iv.cidrs()
    return cidr


@dataclass
class FamilyState:
    chain: bool = False
    rules: list[tuple[Norm, str, str | None]] = field(default_factory=list)  # (form, key, generation)
    jumps: int = 0


@dataclass
class IptState:
    families: dict[int, FamilyState]
    headers: dict[str, ipset.SetHeader]
    counted: bool = True  # False: entry counts are our record's, not the kernel's (see _read)
    elements: dict[str, SetRecord] = field(default_factory=dict)

    def generation(self) -> str | None:
        gens = {gen for fs in self.families.values() for _n, _k, gen in fs.rules if gen}
        return ",".join(sorted(gens)) or None


def _or(count: int | None, default: int) -> int:
    return default if count is None else count


def _comment_of(form: Norm) -> str:
    for name, params in form[5]:
        if name == "comment":
            return str(dict(params).get("comment", ("",))[0])
    return ""


def _filter_exists(family: int) -> bool:
    """Whether the legacy filter table already exists in this thread's namespace. Opening a
    table creates it, so a family nobody uses is checked here and left alone."""
    names = f"/proc/thread-self/net/{'ip' if family == 4 else 'ip6'}_tables_names"
    try:
        with open(names, encoding="ascii") as fh:
            return "filter" in fh.read().split()
    except OSError:
        return False


def _header_ok(ws: IptWantSet, header: ipset.SetHeader) -> bool:
    return (header.type, header.family, header.timeout) == (ws.type, ws.ipset_family, ws.kind in TIMED)


def _chain_problems(plan: KernelPlan, family: int, fs: FamilyState, rules: list[RuleSpec], stale: set[str]) -> list[Problem]:
    """What is wrong with NETPOLICY and its jump in one family; rules only stamped with an
    older generation add that generation to ``stale``."""
    problems: list[Problem] = []
    where = f"filter {CHAIN} (IPv{family})"
    if not rules:
        if fs.chain or fs.jumps:
            problems.append(Problem("unexpected-chain", where, "no listener needs it"))
        return problems
    if not fs.chain:
        problems.append(Problem("missing-chain", where))
    if fs.jumps == 0:
        problems.append(Problem("missing-jump", f"filter INPUT -j {CHAIN} (IPv{family})"))
    elif fs.jumps > 1:
        problems.append(Problem("extra-jump", f"filter INPUT -j {CHAIN} (IPv{family})", f"{fs.jumps} jumps"))
    wanted = {r.key: r for r in rules}
    seen: dict[str, tuple[Norm, str | None]] = {}
    for form, key, gen in fs.rules:
        if key in wanted and key not in seen:
            seen[key] = (form, gen)
        else:
            problems.append(Problem("unexpected-rule", f"{where}: {_comment_of(form) or 'without comment'}"))
    for spec in rules:
        found = seen.get(spec.key)
        if found is None:
            if fs.chain:
                problems.append(Problem("missing-rule", spec.key))
            continue
        form, gen = found
        if form != replace(spec, comment=rule_comment(spec.key, gen or "")).normalized():
            problems.append(Problem("modified-rule", spec.key))
        elif gen != plan.generation:
            stale.add(gen or "none")
    order = [key for _f, key, _g in fs.rules if key in seen]
    if order != [r.key for r in rules if r.key in seen]:
        problems.append(Problem("modified-chain", where, "rule order changed"))
    return problems


def _read_family(family: int) -> FamilyState:
    state = FamilyState()
    if not _filter_exists(family):
        return state
    with xtables_lock(), _table(family) as table:
        iptc = _iptc()
        state.jumps = sum(1 for r in iptc.Chain(table, "INPUT").rules if r.target and r.target.name == CHAIN)
        if table.is_chain(CHAIN):
            state.chain = True
            for rule in iptc.Chain(table, CHAIN).rules:
                form = normalize(rule)
                key, gen = split_comment(_comment_of(form))
                state.rules.append((form, key, gen))
    return state


class IptablesBackend(Backend):
    """iptables (legacy) + ipset; see the module docstring."""

    name = "iptables"
    max_promote_seconds = 2_147_483  # ipset's limit

    def __init__(self, log_group: int | None = None) -> None:
        if log_group is not None:
            raise KernelError(
                "verbose connection logging (NFLOG) needs the nftables backend: python-iptables "
                "crashes building NFLOG rules with a prefix"
            )
        super().__init__()
        self._cache: DataplaneCache | None = None  # refuse sets; counts are ipset's entries
        self._known_headers: dict[str, ipset.SetHeader] = {}  # of our sets, as last read

    @classmethod
    def available(cls) -> bool:
        """Whether legacy ip_tables and ipset work here (without creating a table when the
        kernel already lists ip_tables: opening one would instantiate it)."""
        try:
            if not os.path.exists("/proc/thread-self/net/ip_tables_names"):
                with _table(4):
                    pass
            ipset.run(["list", "-n"])
        except MissingCapability:
            raise
        except KernelError:
            return False
        return True

    # ---- reading -------------------------------------------------------------------------

    def _read(self, want_families: set[int], trust_known: bool, allow_reload: bool = True, count: bool = True) -> IptState:
        """Our chains and sets. ``count=False`` (apply, trusting our record) lists set names
        only, when they are the ones last read: counting a set's entries walks all its hash
        buckets (22 ms at 1M entries); apply then detects drift in the elements it changes by
        their strict add or del failing, and the reconciler's regular check counts them."""
        families = {f: _read_family(f) for f in sorted(want_families)}
        cache = self._cache if trust_known and self._cache is not None and self._cache.here() else None
        recorded = cache is not None and not count and bool(self._known_headers) and ipset.names() == self._known_headers.keys()
        if cache is not None and recorded:
            headers = {n: replace(h, entries=_or(cache.counts.get(n), h.entries)) for n, h in self._known_headers.items()}
        else:
            headers = ipset.headers()
        state = IptState(families, headers, counted=not recorded)
        for name, header in headers.items():
            parsed = NAMES.parse(name)
            if parsed is None or parsed[0] != "refuse" or header.type != "hash:net":
                continue
            trusted = cache.trusted(name, header.entries, None) if cache is not None else None
            if trusted is not None:
                state.elements[name] = trusted
                continue
            mine = cache.sets.get(name) if cache is not None else None
            if allow_reload and mine is not None and mine.intervals is not None and len(mine.intervals) > RELOAD_THRESHOLD:
                state.elements[name] = SetRecord(None)  # its size changed: reloaded, not read
                continue
            state.elements[name] = SetRecord(frozenset(Interval.from_cidr(e) for e, _t in ipset.members(name)))
        return state

    def _families(self, want: IptDesired) -> set[int]:
        """IPv4 always; IPv6 when a listener needs it or our chain is still there."""
        return {4} | ({6} if want.rules[6] or self._ip6_present() else set())

    @staticmethod
    def _ip6_present() -> bool:
        """Whether our chain exists in ip6tables (so it is checked even when no longer wanted)."""
        return _read_family(6).chain

    # ---- diffing -------------------------------------------------------------------------

    def _reconcile(self, plan: KernelPlan, want: IptDesired, state: IptState) -> tuple[KernelDiff, dict[str, Any]]:
        """The diff, and per set what apply must do: ("create" | "reload" | (add, remove))."""
        problems: list[Problem] = []
        stale: set[str] = set()
        for family, fs in state.families.items():
            problems += _chain_problems(plan, family, fs, want.rules.get(family, []), stale)
        if stale:
            problems.append(Problem("generation", f"filter {CHAIN}", f"kernel has {','.join(sorted(stale))}, plan is {plan.generation}"))
        sets = compare_objects(want.sets, state.headers, _header_ok)
        problems += sets.unexpected_problems("set", str) + sets.problems("set", str, "type, family or timeout support changed")
        actions: dict[str, Any] = {name: "destroy" for name in sets.unexpected}
        actions.update({name: "create" if what == "missing" else "replace" for name, what in sets.changes})
        deltas: list[SetDelta] = []
        for ws in want.sets.values():
            if ws.kind != "refuse":
                continue
            if actions.get(ws.name) in ("create", "replace"):
                if ws.refuse:
                    deltas.append(SetDelta(ws.listener, ws.family, ipset_intervals(ws.refuse)))
                continue
            known = state.elements[ws.name]
            if known.intervals is None:
                problems.append(Problem("modified-set", ws.name, "its size changed behind netpolicy's back; reloading it"))
                actions[ws.name] = "reload"
                continue
            add, remove = self._delta(known, ws)
            if len(known.intervals) + len(add) - len(remove) > state.headers[ws.name].maxelem:
                actions[ws.name] = "reload"
            elif add or remove:
                actions[ws.name] = (add, remove)
            if add or remove:
                deltas.append(SetDelta(ws.listener, ws.family, add, remove))
        return KernelDiff(self.name, plan.generation, state.generation(), tuple(problems), tuple(deltas)), actions

    @staticmethod
    def _delta(known: SetRecord, ws: IptWantSet) -> tuple[frozenset[Interval], frozenset[Interval]]:
        found = element_delta(known, ws.refuse, lambda: ipset_intervals(ws.refuse), _hash_net)
        assert found is not None  # the caller passes a record with its elements
        return found

    # ---- writing -------------------------------------------------------------------------

    @staticmethod
    def _create_lines(ws: IptWantSet, name: str, count: int) -> list[str]:
        if ws.kind == "learned":  # room over the learner's cap for entries our clock has let go first
            count = MAX_LEARNED
        maxelem = max(MIN_MAXELEM, 1 << max(1, 2 * count - 1).bit_length())
        extra = " timeout 0" if ws.kind in TIMED else ""
        return [f"create {name} {ws.type} family {ws.ipset_family} maxelem {maxelem}{extra}"]

    def _fill_lines(self, ws: IptWantSet, name: str) -> list[str]:
        entries = [_entry(block) for iv in ws.refuse for block in _blocks(iv)]
        return self._create_lines(ws, name, len(entries)) + [f"add {name} {entry}" for entry in entries]

    def _ipset_before(self, want: IptDesired, state: IptState, actions: dict[str, Any], strict: bool) -> tuple[list[str], list[str]]:
        """ipset commands to run before the rules change, and after (once unreferenced).
        ``strict``: element changes fail on an element already there or already gone."""
        exist = "" if strict else " -exist"
        before: list[str] = []
        after: list[str] = []
        for name, action in actions.items():
            ws = want.sets.get(name)
            if action == "destroy":
                after.append(f"destroy {name}")
            elif ws is None:
                continue
            elif action == "create":
                before += self._fill_lines(ws, name)
            elif action == "replace":  # wrong type: rules still use it, so rename it out of the way
                before += [f"rename {name} {temp_name(name)}", *self._fill_lines(ws, name)]
                after.append(f"destroy {temp_name(name)}")
            elif action == "reload":
                tmp = temp_name(name)
                if tmp in state.headers:
                    before.append(f"destroy {tmp}")
                before += [*self._fill_lines(ws, tmp), f"swap {tmp} {name}", f"destroy {tmp}"]
            else:
                add, remove = action
                # additions first: a narrower entry is only dropped once its replacement is in
                before += [f"add {name} {_entry(iv)}{exist}" for iv in sorted(add)]
                before += [f"del {name} {_entry(iv)}{exist}" for iv in sorted(remove)]
        return before, after

    def _sync_rules(self, family: int, specs: list[RuleSpec]) -> None:
        """Make NETPOLICY and the INPUT jump match ``specs`` in one libiptc commit, under the
        xtables lock, reading the table afresh so no concurrent change is overwritten."""
        iptc = _iptc()
        if not specs and not _filter_exists(family):
            return
        with xtables_lock(), _table(family) as table:
            input_chain = iptc.Chain(table, "INPUT")
            jumps = [r for r in input_chain.rules if r.target and r.target.name == CHAIN]
            changed = False
            if not specs:
                for rule in jumps:
                    input_chain.delete_rule(rule)
                    changed = True
                if table.is_chain(CHAIN):
                    table.flush_entries(CHAIN)
                    table.delete_chain(CHAIN)
                    changed = True
            else:
                if not table.is_chain(CHAIN):
                    table.create_chain(CHAIN)
                    changed = True
                chain = iptc.Chain(table, CHAIN)
                current = list(chain.rules)
                forms = [normalize(r) for r in current]
                if forms != [s.normalized() for s in specs]:
                    counters = {split_comment(_comment_of(f))[0]: r.get_counters() for f, r in zip(forms, current, strict=True)}
                    table.flush_entries(CHAIN)
                    for spec in specs:
                        rule = spec.build()
                        if spec.key in counters:  # keep refusal counts across generations
                            rule.set_counters(counters[spec.key])
                        chain.append_rule(rule)
                    changed = True
                if not jumps:
                    jump = iptc.Rule() if family == 4 else iptc.Rule6()
                    jump.target = iptc.Target(jump, CHAIN)
                    input_chain.insert_rule(jump)
                    changed = True
                for rule in jumps[1:]:
                    input_chain.delete_rule(rule)
                    changed = True
            if changed:
                try:
                    table.commit()
                except iptc.IPTCError as exc:
                    raise KernelError(f"libiptc commit failed: {exc}") from exc

    # ---- Backend -------------------------------------------------------------------------

    @serialized
    def diff(self, plan: KernelPlan) -> KernelDiff:
        want = desired(plan)
        state = self._read(self._families(want), trust_known=False)
        result, _actions = self._reconcile(plan, want, state)
        self._remember_verified(state, want, result)
        return result

    @serialized
    def quick_diff(self, plan: KernelPlan) -> KernelDiff:
        want = desired(plan)
        state = self._read(self._families(want), trust_known=True)
        result, _actions = self._reconcile(plan, want, state)
        if result.in_sync:
            self._remember_verified(state, want, result)
        else:  # keep the old record, but make the repairing apply count the sets again
            self._known_headers = {}
        return result

    def _remember_verified(self, state: IptState, want: IptDesired, result: KernelDiff) -> None:
        changed = {(d.listener, d.family) for d in result.sets}
        cache = DataplaneCache(None)
        for name, known in state.elements.items():
            if known.intervals is None:
                continue
            ws = want.sets.get(name)
            in_sync = ws is not None and (ws.listener, ws.family) not in changed
            cache.sets[name] = SetRecord(known.intervals, ws.refuse if in_sync and ws else None)
            cache.counts[name] = state.headers[name].entries
        self._cache = cache
        self._known_headers = state.headers

    @serialized
    def apply(self, plan: KernelPlan) -> KernelDiff:
        want = desired(plan)
        families = self._families(want)
        state = self._read(families, trust_known=True, count=False)
        try:
            return self._apply(plan, want, families, state)
        except KernelError:
            if state.counted:
                raise
        # a strict add or del failed: the set is not what our record says; read it and redo
        return self._apply(plan, want, families, self._read(families, trust_known=False))

    def _apply(self, plan: KernelPlan, want: IptDesired, families: set[int], state: IptState) -> KernelDiff:
        result, actions = self._reconcile(plan, want, state)
        if result.in_sync:
            self._remember_verified(state, want, result)
            return result
        self._cache, self._known_headers = None, {}
        before, after = self._ipset_before(want, state, actions, strict=not state.counted)
        if state.generation() != plan.generation:  # learned under another policy: see Backend.apply
            before += [f"flush {ws.name}" for ws in want.sets.values()
                       if ws.kind == "learned" and ws.name in state.headers and actions.get(ws.name) is None]
        ipset.restore(before)
        for family in sorted(families):
            self._sync_rules(family, want.rules.get(family, []))
        ipset.restore(after)
        # Listing headers walks every hash bucket (22 ms for a 1M-entry set): only done when a
        # set was created or reloaded. After element changes alone, the kernel's count is the
        # one before plus what was added, minus what was removed.
        incremental = all(action is None or isinstance(action, tuple) for action in actions.values())
        headers = state.headers if incremental else ipset.headers()
        cache = DataplaneCache(None)
        for ws in want.sets.values():
            if ws.kind != "refuse" or ws.name not in headers:
                continue
            action = actions.get(ws.name)
            old = state.elements.get(ws.name)
            if (action is None or isinstance(action, tuple)) and old is not None and old.intervals is not None:
                # our own record from the last apply is updated in place (a copy of 1M entries
                # would cost more than the change); a set just read is copied once
                entries = old.intervals if isinstance(old.intervals, set) else set(old.intervals)
                if action is not None:
                    entries.difference_update(action[1])
                    entries.update(action[0])
            else:
                entries = set(ipset_intervals(ws.refuse))
            cache.sets[ws.name] = SetRecord(entries, ws.refuse)
            cache.counts[ws.name] = len(entries) if incremental else headers[ws.name].entries
        self._cache, self._known_headers = cache, headers
        return result

    @serialized
    def flush(self) -> bool:
        self._cache, self._known_headers = None, {}
        found = False
        for family in (4, 6):
            state = _read_family(family)
            if state.chain or state.jumps:
                found = True
                self._sync_rules(family, [])
        names = sorted(ipset.headers())
        ipset.restore([f"destroy {name}" for name in names])
        return found or bool(names)

    @serialized
    def status(self, plan: KernelPlan | None = None) -> KernelStatus:
        families = {4} | ({6} if self._ip6_present() else set())
        counters: dict[str, int] = {}
        gens: set[str] = set()
        iptc = _iptc()
        for family in sorted(families):
            if not _filter_exists(family):
                continue
            with xtables_lock(), _table(family) as table:
                if not table.is_chain(CHAIN):
                    continue
                for rule in iptc.Chain(table, CHAIN).rules:
                    key, gen = split_comment(_comment_of(normalize(rule)))
                    parts = key.split()
                    if len(parts) == 3 and parts[0] == "netpolicy":
                        counters[parts[1]] = counters.get(parts[1], 0) + rule.get_counters()[0]
                    if gen:
                        gens.add(gen)
        sizes: dict[str, dict[str, int]] = {}
        for name, header in ipset.headers().items():
            parsed = NAMES.parse(name)
            if parsed is not None:
                kind, family, lid = parsed
                sizes.setdefault(lid, {})[role_label(kind, family)] = header.entries
        installed = {lid for lid in sizes if lid in counters}
        return KernelStatus(self.name, ",".join(sorted(gens)) or None, listener_statuses(plan, sizes, counters, installed))

    @serialized
    def promote(self, listener: str, address: str, seconds: float) -> None:
        family, name = promotion_set(NAMES, listener, address, seconds, self.max_promote_seconds)
        if name not in ipset.headers():
            raise missing_timed_set(listener, "promoted", family)
        ipset.restore([f"add {name} {address} timeout {int(seconds)} -exist"])

    @serialized
    def promoted(self) -> list[Promotion]:
        return [Promotion(*found) for found in self._timed("promoted")]

    @serialized
    def learn(self, listener: str, hosts: Mapping[str, int]) -> None:
        """One ``ipset restore`` for every address; ``-exist`` gives one already there the time
        passed."""
        sets = timed_sets(NAMES, "learned", listener, hosts, self.max_promote_seconds)
        names = ipset.names()
        for family, name in sets:
            if name not in names:
                raise missing_timed_set(listener, "learned", family)
        ipset.restore([f"add {name} {address} timeout {int(seconds)} -exist"
                       for (_family, name), found in sets.items() for address, seconds in found.items()])

    @serialized
    def learned(self) -> list[LearnedRefusal]:
        return [LearnedRefusal(*found) for found in self._timed("learned")]

    @staticmethod
    def _timed(kind: str) -> list[tuple[str, str, float]]:
        """(listener id, address, seconds left) of every member of the ``kind`` timed sets."""
        out: list[tuple[str, str, float]] = []
        for name in ipset.names():
            parsed = NAMES.parse(name)
            if parsed is not None and parsed[0] == kind:
                out += [(parsed[2], entry, left or 0.0) for entry, left in ipset.members(name)]
        return out
