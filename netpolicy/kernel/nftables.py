"""The nftables backend: everything lives in the table ``inet netpolicy``.

Layout, per kernel-enforced listener (``<id>`` from ``layout.listener_id``) and per family the
listener can receive (4 shown; 6 is the same with ``ip6``)::

    table inet netpolicy {
        counter refused_<id>                                # refusals, for status
        set h4_<id> { type ipv4_addr; }                     # the plan's single hosts
        set n4_<id> { type ipv4_addr; flags interval; }     # the plan's ranges
        set t4_<id> { type ipv4_addr; flags interval; }     # empty, but while a network is replaced
        set p4_<id> { type ipv4_addr; flags timeout; }      # hosts promoted at runtime
        set l4_<id> { type ipv4_addr; flags timeout; }      # learned refusals (netpolicy.kernel.learning)
        chain input { type filter hook input priority filter - 10; policy accept;
            [ip daddr A] tcp dport P tcp flags syn / fin,syn,rst,ack ip saddr @h4_<id>
                counter name refused_<id> reject with tcp reset comment "netpolicy <id> hosts4 gen=G"
            ... the same rule for @n4_<id> (networks4), @t4_<id> (transit4), @p4_<id> (promoted4)
            and @l4_<id> (learned4)
        }
    }

Why hosts and networks apart: on the project's kernel (6.18) committing any change to an
interval set costs time proportional to its size (about 0.4 s for one element in a 1M-entry
set), while a hash set takes about 1 ms. Blocklists are mostly single hosts, so they go to the
hash set and one-address updates stay cheap; per-packet cost stays one hash lookup plus one
interval lookup, whatever the list size.

The policy generation sits in each rule's comment (table, chain and set comments cannot be
changed in place; rules can be replaced inside the same transaction). Every change is one
nfnetlink transaction carrying ``NFNL_BATCH_GENID``: it happens entirely or not at all, packets
never see a half-applied state, and a batch computed from a stale read is refused by the kernel
and recomputed. Element changes send only the changed elements. One exception: when a refused
address's entry moves between the hosts and the networks set, or its network is replaced by an
overlapping one, the change is spread over two or three transactions (the new entry first, or
a copy in the transit set), so that every state in between refuses it: see
``_element_phases`` for the measurement.

What to change is worked out by the backend-neutral engine (netpolicy.kernel.engine: the
dataplane cache, when it stands for the kernel, element deltas); this module reads and writes
nf_tables and orders the writes. The contract is in netpolicy/kernel/README.md.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
from collections.abc import Callable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from netpolicy.kernel import nfnl
from netpolicy.kernel import nftmsg as m
from netpolicy.kernel.base import Backend, netns_id, serialized
from netpolicy.kernel.delta import is_host, split_hosts
from netpolicy.kernel.engine import (
    DataplaneCache,
    SetNames,
    SetRecord,
    compare_objects,
    element_delta,
    list_delta,
    listener_statuses,
    missing_timed_set,
    promotion_set,
    timed_sets,
)
from netpolicy.kernel.layout import (
    COMMENT_PREFIX,
    OwnedSet,
    layout,
    rule_comment,
    split_comment,
)
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
from netpolicy.model.intervals import Interval, intersecting
from netpolicy.model.plan import KernelPlan

TABLE = "netpolicy"
CHAIN = "input"
PRIORITY = -10
TABLE_COMMENT = "managed by netpolicy: changes made here are reverted"
KINDS = ("hosts", "networks", "transit", "promoted", "learned")
TIMED = ("promoted", "learned")  # sets of hosts added at runtime with timeouts, not from the plan
LOG_PREFIX = "netpolicy:"  # NFLOG prefix, followed by the listener id (see netpolicy.kernel.nflog)
LOG_RATE, LOG_BURST = 50, 100  # verbose logging of refusals: packets per second, burst
# Above this many elements, a set whose size changed is reloaded rather than read back: the
# kernel restarts its walk of a set for every dump message, so reading 1M entries takes minutes.
RELOAD_THRESHOLD = 50_000

P = ParamSpec("P")
R = TypeVar("R")


NAMES = SetNames("{kind}{family}_{lid}", KINDS)  # h4_<id>, n6_<id>, ...


def counter_name(lid: str) -> str:
    return f"refused_{lid}"


def refuse_chain(lid: str) -> str:
    return f"refuse_{lid}"


def _spec(kind: str, family: int) -> m.SetSpec:
    flags = {"hosts": 0, "networks": m.NFT_SET_INTERVAL, "transit": m.NFT_SET_INTERVAL,
             "promoted": m.NFT_SET_TIMEOUT, "learned": m.NFT_SET_TIMEOUT}[kind]
    return m.SetSpec(family, flags)


@dataclass(frozen=True)
class NftWantSet(OwnedSet):
    @property
    def spec(self) -> m.SetSpec:
        return _spec(self.kind, self.family)


@dataclass(frozen=True)
class WantGroup:
    """The refuse list of one listener and family, kept in a hosts set and a networks set."""

    listener: str
    family: int
    refuse: tuple[Interval, ...]
    hosts: str
    networks: str
    transit: str  # empty, but while a network is replaced by an overlapping one: _element_phases


@dataclass
class WantRule:
    chain: str
    key: str
    exprs: list[m.Expr]
    comment: str


@dataclass
class NftDesired:
    chains: dict[str, int | None] = field(default_factory=dict)  # name -> hook priority (None: regular)
    sets: dict[str, NftWantSet] = field(default_factory=dict)
    groups: list[WantGroup] = field(default_factory=list)
    rules: list[WantRule] = field(default_factory=list)
    counters: dict[str, str] = field(default_factory=dict)


def desired(plan: KernelPlan, log_group: int | None) -> NftDesired:
    """Input rules (in chain order), then each listener's refuse chain: optional rate-limited
    NFLOG for verbose connection logging, then the listener's one ``reject with tcp reset``."""
    want = NftDesired()
    refuse_rules: list[WantRule] = []
    for ll in layout(plan):
        chain = refuse_chain(ll.lid)
        counter = counter_name(ll.lid)
        want.chains[chain] = None
        want.counters[counter] = f"refusals of listener {ll.name}"
        for family in ll.families:
            names = {kind: NAMES.name(kind, ll.lid, family) for kind in KINDS}
            want.groups.append(WantGroup(ll.name, family, ll.refuse(family), names["hosts"], names["networks"], names["transit"]))
            for kind in KINDS:
                want.sets[names[kind]] = NftWantSet(names[kind], ll.lid, ll.name, kind, family)
                key = ll.rule_key(kind, family)
                exprs = [*m.match_exprs(family, ll.daddr(family), ll.port, names[kind]), m.goto(chain)]
                want.rules.append(WantRule(CHAIN, key, exprs, rule_comment(key, plan.generation)))
        if log_group is not None:
            key = f"{COMMENT_PREFIX} {ll.lid} log"
            exprs = m.log_exprs(log_group, f"{LOG_PREFIX}{ll.lid}", LOG_RATE, LOG_BURST)
            refuse_rules.append(WantRule(chain, key, exprs, rule_comment(key, plan.generation)))
        key = f"{COMMENT_PREFIX} {ll.lid} reject"
        refuse_rules.append(WantRule(chain, key, m.reject_exprs(counter), rule_comment(key, plan.generation)))
    if want.chains:
        want.chains = {CHAIN: PRIORITY, **want.chains}
    want.rules = refuse_rules + want.rules  # refuse chains exist and are filled before gotos to them
    return want


@dataclass
class NftState:
    """Our table as read from the kernel; ``elements`` holds its hosts and networks sets."""

    genid: int
    table: m.TableDump | None
    elements: dict[str, SetRecord] = field(default_factory=dict)
    consistent: bool = True  # the ruleset generation did not move while we read

    def generation(self) -> str | None:
        if self.table is None:
            return None
        gens = {split_comment(r.comment)[1] for r in self.table.rules if r.comment}
        return ",".join(sorted(g for g in gens if g)) or None


# per hosts/networks set: (added, removed), or None when the set is created or reloaded whole
Changes = dict[str, tuple[frozenset[Interval], frozenset[Interval]] | None]


@dataclass
class _Batch:
    """One reconciliation: the diff, the transaction removing it, and for each hosts/networks
    set the elements it adds and removes (None: the set is created or reloaded whole)."""

    diff: KernelDiff
    msgs: list[nfnl.Message] = field(default_factory=list)
    then: list[list[nfnl.Message]] = field(default_factory=list)  # later transactions, see _element_phases
    changes: Changes = field(default_factory=dict)


def _chain_ok(priority: int | None, info: m.ChainInfo) -> bool:
    """A base chain (``priority`` given) hooks input with our priority, type and policy; a
    regular chain has no hook."""
    hook = (m.NF_INET_LOCAL_IN, priority, m.NF_ACCEPT, "filter") if priority is not None else (None, None, None, None)
    return (info.hooknum, info.priority, info.policy, info.type) == hook


def _spec_ok(info: m.SetInfo, spec: m.SetSpec) -> bool:
    return (info.flags, info.key_type, info.key_len) == (spec.flags, spec.key_type, spec.key_len)


def _encode(kind: str, intervals: Set[Interval]) -> list[bytes]:
    return m.host_elements(intervals) if kind == "hosts" else m.interval_elements(intervals)


def _netlink_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn kernel refusals into the kernel layer's errors (EPERM names the capability)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except nfnl.NetlinkError as exc:
            if exc.errno == errno.EPERM:
                raise MissingCapability("the kernel refused nf_tables access") from exc
            raise KernelError(f"nftables: {exc}") from exc
        except PermissionError as exc:
            raise MissingCapability(str(exc)) from exc
        except OSError as exc:  # the socket itself failed: timeout, out of buffer space
            raise KernelError(f"nftables: netlink: {exc}") from exc

    return wrapper


def _group_changes(group: WantGroup, state: NftState, fresh: set[str]) -> Changes:
    """Per set of ``group``: (add, remove), or None to (re)load it whole from the plan. When
    both sets hold one same refuse list, its delta to the plan's is split between them."""
    hosts, nets = state.elements.get(group.hosts), state.elements.get(group.networks)
    if not fresh & {group.hosts, group.networks} and hosts is not None and nets is not None and None not in (hosts.intervals, nets.intervals) and hosts.source is nets.source:
        found = list_delta(hosts.source, group.refuse)
        if found is not None:
            added, removed = found
            return {
                group.hosts: (frozenset(filter(is_host, added)), frozenset(filter(is_host, removed))),
                group.networks: (added - {i for i in added if is_host(i)}, removed - {i for i in removed if is_host(i)}),
            }
    out: Changes = {}
    for name, want in zip((group.hosts, group.networks), split_hosts(group.refuse), strict=True):
        record = state.elements.get(name)
        # each set holds only part of its source list: compared by elements, not by list
        out[name] = None if name in fresh or record is None else element_delta(SetRecord(record.intervals), group.refuse, functools.partial(frozenset, want))
    return out


def _reconcile(plan: KernelPlan, want: NftDesired, state: NftState) -> _Batch:
    """The diff between ``state`` and ``want`` and the transaction that removes it (with, at
    times, element changes spread over further ones: see ``_element_phases``)."""
    problems: list[Problem] = []
    t = state.table
    if t is None:
        if not want.sets:
            return _Batch(KernelDiff("nftables", plan.generation, None))
        problems.append(Problem("missing-table", f"inet {TABLE}"))
        batch = _Batch(KernelDiff("nftables", plan.generation, None))
        batch.msgs.append(m.new_table(TABLE, TABLE_COMMENT))
        batch.msgs += [m.new_counter(TABLE, name, comment) for name, comment in want.counters.items()]
        batch.msgs += _create_sets(want, list(want.sets), state, batch)
        batch.msgs += [m.new_chain(TABLE, name, priority) for name, priority in want.chains.items()]
        batch.msgs += [m.new_rule(TABLE, r.chain, r.exprs, r.comment) for r in want.rules]
        batch.diff = KernelDiff("nftables", plan.generation, None, tuple(problems), batch.diff.sets)
        return batch
    if not want.sets:
        problems.append(Problem("unexpected-table", f"inet {TABLE}", "the plan enforces nothing in the kernel"))
        return _Batch(KernelDiff("nftables", plan.generation, state.generation(), tuple(problems)), [m.del_table(TABLE)])

    def in_table(name: str) -> str:
        return f"inet {TABLE} {name}"

    chains = compare_objects(want.chains, t.chains, _chain_ok)
    problems += chains.problems("chain", in_table, "hook, priority, type or policy changed")
    problems += chains.unexpected_problems("chain", in_table)
    missing_chains, recreate_chains, extra_chains = chains.names("missing"), chains.names("modified"), list(chains.unexpected)
    replace_rules = bool(chains.changes or chains.unexpected)

    # rules, matched to what we want by the key in their comment
    wanted = {r.key: r for r in want.rules}
    matched: dict[str, tuple[m.RuleInfo, str | None]] = {}
    for rule in t.rules:
        key, gen = split_comment(rule.comment or "")
        wr = wanted.get(key)
        if wr is not None and rule.chain == wr.chain and key not in matched:
            matched[key] = (rule, gen)
        else:
            problems.append(Problem("unexpected-rule", rule.comment or f"handle {rule.handle} in chain {rule.chain}"))
            replace_rules = True
    stale: set[str] = set()
    for wr in want.rules:
        found = matched.get(wr.key)
        if found is None:
            problems.append(Problem("missing-rule", wr.key))
            replace_rules = True
        elif not m.same_exprs(found[0].exprs, wr.exprs):
            problems.append(Problem("modified-rule", wr.key, f"handle {found[0].handle}"))
            replace_rules = True
        elif found[1] != plan.generation:
            stale.add(found[1] or "none")
    for name in want.chains:
        have_order = [k for k, (rule, _gen) in sorted(matched.items(), key=lambda kv: t.rules.index(kv[1][0])) if rule.chain == name]
        if have_order != [wr.key for wr in want.rules if wr.chain == name and wr.key in matched]:
            problems.append(Problem("modified-chain", f"inet {TABLE} {name}", "rule order changed"))
            replace_rules = True
    if stale:  # only the generation in the comments is old: re-stamp in place, see replace_rule
        problems.append(Problem("generation", f"inet {TABLE}", f"kernel has {','.join(sorted(stale))}, plan is {plan.generation}"))

    pre: list[nfnl.Message] = []  # deletions of sets and counters, once no rule uses them
    post: list[nfnl.Message] = []
    counters = compare_objects(want.counters, t.counters, lambda _want, _have: True)
    problems += counters.problems("counter", str) + counters.unexpected_problems("counter", str)
    post += [m.new_counter(TABLE, name, want.counters[name]) for name in counters.names("missing")]
    sets = compare_objects(want.sets, t.sets, lambda ws, have: _spec_ok(have, ws.spec))
    problems += sets.unexpected_problems("set", str) + sets.problems("set", str, "type or flags changed")
    pre += [m.del_counter(TABLE, name) for name in counters.unexpected]
    pre += [m.del_set(TABLE, name) for name in (*sets.unexpected, *sets.names("modified"))]
    replace_rules |= bool(counters.unexpected or sets.unexpected or sets.names("modified"))
    to_create = [name for name, _what in sets.changes]

    batch = _Batch(KernelDiff("nftables", plan.generation, state.generation()))
    post += _create_sets(want, to_create, state, batch)
    element_msgs: list[nfnl.Message] = []
    if state.generation() != plan.generation:  # learned under another policy: see Backend.apply
        element_msgs += [m.flush_set(TABLE, name) for name, ws in want.sets.items()
                         if ws.kind == "learned" and name in t.sets and name not in to_create]
    for group in want.groups:  # a transit set left holding elements (an apply cut short)
        transit = t.sets.get(group.transit)
        if group.transit not in to_create and transit is not None and transit.count:
            problems.append(Problem("modified-set", group.transit, f"{transit.count} elements left from an interrupted change"))
            element_msgs.append(m.flush_set(TABLE, group.transit))
    for name, change in batch.changes.items():
        if change is None and name not in to_create:
            problems.append(Problem("modified-set", name, "its size changed behind netpolicy's back; reloading it"))
            element_msgs.append(m.flush_set(TABLE, name))
            element_msgs += m.element_messages(nfnl.NEWSETELEM, TABLE, name, _encode(want.sets[name].kind, _wanted(want, name)))
    first, *then = _element_phases(want, batch.changes)
    element_msgs += [msg for op in first for msg in op.messages()]
    batch.then = [[msg for op in phase for msg in op.messages()] for phase in then]

    msgs: list[nfnl.Message] = []
    if replace_rules:  # rules go first: sets, counters and chains can only go once unreferenced
        msgs += [m.del_rule(TABLE, r.chain, r.handle) for r in t.rules]
    msgs += [m.del_chain(TABLE, name) for name in extra_chains + recreate_chains]
    msgs += pre + post + element_msgs
    msgs += [m.new_chain(TABLE, name, want.chains[name]) for name in missing_chains + recreate_chains]
    if replace_rules:
        msgs += [m.new_rule(TABLE, r.chain, r.exprs, r.comment) for r in want.rules]
    elif stale:
        msgs += [m.replace_rule(TABLE, r.chain, matched[r.key][0].handle, r.exprs, r.comment) for r in want.rules]
    batch.msgs = msgs
    batch.diff = KernelDiff("nftables", plan.generation, state.generation(), tuple(problems), batch.diff.sets)
    return batch


@dataclass(frozen=True)
class ElementOp:
    """Elements added to (or removed from) one set, as one step of a transaction."""

    add: bool
    set: str
    kind: str
    elements: frozenset[Interval]

    def messages(self) -> list[nfnl.Message]:
        kind = nfnl.NEWSETELEM if self.add else nfnl.DELSETELEM
        return m.element_messages(kind, TABLE, self.set, _encode(self.kind, self.elements))


def _element_phases(want: NftDesired, changes: Changes) -> list[list[ElementOp]]:
    """The element changes of every listener's sets as one to three transactions, so that an
    address refused before and after is refused by one same set element across each commit.

    Measured on kernel 6.18 (``bench/bench_window.py``, a prober at ~16,000 SYN/s): with every
    change in one transaction, an address whose entry moved between the hash set and the
    interval set got through 89 times in 1,500 applies, and one whose network was replaced by an
    overlapping one inside the interval set 2 times in 7,000. The packet path looks an address
    up in each set in turn, and a commit can fall between two lookups or inside one. So:

    1. hosts added; hosts removed that the new plan does not refuse otherwise; networks that
       replace overlapping ones copied into the transit set;
    2. networks removed, then added (``_replacing``). A transaction of its own when a network removed here covers a host added in
       phase 1, or replaces one copied to the transit set;
    3. hosts removed that a network of the new plan now covers; the transit set emptied.
    """
    first: list[ElementOp] = []
    networks: list[ElementOp] = []
    last: list[ElementOp] = []
    split = False
    for group in want.groups:
        hosts, nets = changes.get(group.hosts), changes.get(group.networks)
        if hosts is None or nets is None:  # one set is created or reloaded whole: the other in one step
            for name, change in ((group.hosts, hosts), (group.networks, nets)):
                if change is not None:
                    first += _replacing(name, want.sets[name].kind, change)
            continue
        (h_add, h_remove), (n_add, n_remove) = hosts, nets
        h_later = _overlapping(h_remove, n_add)
        bridged = _overlapping(n_add, n_remove)
        split |= bool(bridged or _overlapping(n_remove, h_add))
        first += [
            ElementOp(True, group.hosts, "hosts", h_add),
            ElementOp(False, group.hosts, "hosts", h_remove - h_later),
            ElementOp(True, group.transit, "transit", bridged),
        ]
        networks += _replacing(group.networks, "networks", nets)
        last += [ElementOp(False, group.hosts, "hosts", h_later), ElementOp(False, group.transit, "transit", bridged)]
    phases = [first, networks, last] if split else [first + networks, last]
    nonempty = [[op for op in phase if op.elements] for phase in phases]
    return nonempty[:1] + [phase for phase in nonempty[1:] if phase]


def _replacing(name: str, kind: str, change: tuple[frozenset[Interval], frozenset[Interval]]) -> list[ElementOp]:
    """Removals, then additions, in one step: a wider network may replace narrower ones."""
    return [ElementOp(False, name, kind, change[1]), ElementOp(True, name, kind, change[0])]


def _overlapping(these: frozenset[Interval], others: frozenset[Interval]) -> frozenset[Interval]:
    """The intervals of ``these`` that share an address with ``others``."""
    if not these or not others:
        return frozenset()
    hit = set(intersecting(_spans(these), _spans(others)))
    return frozenset(iv for iv in these if (iv.first, iv.last) in hit)


def _spans(intervals: Set[Interval]) -> list[tuple[int, int]]:
    return [(iv.first, iv.last) for iv in intervals]


def _wanted(want: NftDesired, name: str) -> frozenset[Interval]:
    for group in want.groups:
        if name in (group.hosts, group.networks):
            hosts, nets = split_hosts(group.refuse)
            return hosts if name == group.hosts else nets
    return frozenset()


def _create_sets(want: NftDesired, names: list[str], state: NftState, batch: _Batch) -> list[nfnl.Message]:
    """Messages creating ``names`` (with their elements); fills in element changes and the
    per-listener, per-family lines of ``batch.diff`` for every refuse group."""
    msgs: list[nfnl.Message] = []
    ids = {name: i for i, name in enumerate(names, start=1)}
    for name in names:
        ws = want.sets[name]
        comment = f"{role_label(ws.kind, ws.family)} of listener {ws.listener}"
        msgs.append(m.new_set(TABLE, name, ws.spec, ids[name], comment))
    fresh = set(names)
    deltas: list[SetDelta] = []
    for group in want.groups:
        changes = _group_changes(group, state, fresh)
        add: set[Interval] = set()
        remove: set[Interval] = set()
        for name, change in changes.items():
            batch.changes[name] = change
            if change is None:
                if name in fresh:
                    elements = _wanted(want, name)
                    add |= elements
                    if elements:
                        msgs += m.element_messages(nfnl.NEWSETELEM, TABLE, name, _encode(want.sets[name].kind, elements), ids[name])
            else:
                add |= change[0]
                remove |= change[1]
        if add or remove:
            deltas.append(SetDelta(group.listener, group.family, frozenset(add), frozenset(remove)))
    batch.diff = KernelDiff(batch.diff.backend, batch.diff.generation, batch.diff.kernel_generation, (), tuple(deltas))
    return msgs


class NftablesBackend(Backend):
    """nf_tables through raw nfnetlink; see the module docstring for the layout."""

    name = "nftables"
    max_promote_seconds = 365 * 86400

    def __init__(self, log_group: int | None = None) -> None:
        """``log_group``: NFLOG group for verbose connection logging of refusals (None: off)."""
        super().__init__()
        self.log_group = log_group
        self._cache: DataplaneCache | None = None
        self._sock: tuple[int, nfnl.NfnlSocket] | None = None  # (network namespace, socket)

    @classmethod
    def available(cls) -> bool:
        """Whether nf_tables answers here; raises MissingCapability when it refuses us."""
        try:
            with nfnl.NfnlSocket() as sock:
                sock.genid()
        except nfnl.NetlinkError as exc:
            if exc.errno == errno.EPERM:
                raise MissingCapability("the kernel refused nf_tables access") from exc
            return False
        except OSError:
            return False
        return True

    @contextmanager
    def _session(self) -> Iterator[nfnl.NfnlSocket]:
        """The netlink socket for the calling thread's namespace, kept open between calls.

        Why not one per call: closing a socket that has committed waits for the kernel's
        deferred transaction clean-up (an RCU grace period): 4-5 ms measured, a fifth of a
        one-host update on a 1M-entry plan. Any error closes it, so that no half-read reply
        can reach the next request.
        """
        ns = netns_id()
        if self._sock is not None and self._sock[0] != ns:
            self._close_socket()
        if self._sock is None:
            self._sock = (ns, nfnl.NfnlSocket())
        try:
            yield self._sock[1]
        except BaseException:
            self._close_socket()
            raise

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock[1].close()
            self._sock = None

    # ---- reading -------------------------------------------------------------------------

    def _cache_here(self) -> DataplaneCache | None:
        cache = self._cache
        return cache if cache is not None and cache.here() else None

    def _read(self, sock: nfnl.NfnlSocket, want: NftDesired, trust_known: bool, allow_reload: bool = True) -> NftState:
        """Our table without elements, then the elements of each hosts and networks set: taken
        from what this process knows while the kernel reports the same ruleset generation (no
        commit since, by anyone); else checked by lookups against what this process knows or,
        without a record, against the plan (``_check``: a sixth of a dump's cost at 1M
        entries); else read (or, for big sets whose size changed, marked for a reload).

        A changed generation is never answered from the record alone, even when every set
        kept its size: one element deleted and another added keeps it."""
        genid = sock.genid()
        table = m.read_table(sock, TABLE)
        state = NftState(genid, table)
        if table is None:
            return state
        cache = self._cache_here() if trust_known else None
        for name, info in table.sets.items():
            parsed = NAMES.parse(name)
            if parsed is None or parsed[0] in ("transit", *TIMED) or not _spec_ok(info, _spec(parsed[0], parsed[1])):
                continue
            trusted = cache.trusted(name, info.count, genid) if cache is not None else None
            if trusted is not None:
                state.elements[name] = trusted
                continue
            mine = cache.sets.get(name) if cache is not None else None
            expected = mine.intervals if mine is not None else None
            if allow_reload and expected is not None and cache is not None and len(expected) > RELOAD_THRESHOLD and cache.size_changed(name, info.count):
                state.elements[name] = SetRecord(None)
                continue
            if expected is None and name in want.sets:
                expected = _wanted(want, name)
            if expected is not None and info.count is not None:
                found = self._check(sock, name, parsed[0], expected, info.count)
                if found is not None:
                    state.elements[name] = mine if mine is not None and found is expected else SetRecord(found)
                    continue
            state.elements[name] = SetRecord(self._read_set(sock, name, parsed[0], parsed[1]))
        state.consistent = sock.genid() == genid
        return state

    @classmethod
    def _check(cls, sock: nfnl.NfnlSocket, name: str, kind: str, expected: Set[Interval], count: int) -> Set[Interval] | None:
        """The elements of a hosts or networks set found by lookups of ``expected`` (the set
        itself when it holds exactly that), or None when only a dump can tell.

        Why not a dump: the kernel restarts its walk of a set for every dump message, so a
        fresh diff of a plan of 1M networks took 222 s on kernel 6.18 (the project machine,
        shared and loaded; ~80 s quiet), and takes 8.8 s by 2M batched lookups."""
        if kind == "hosts":
            return cls._check_hosts(sock, name, expected, count)
        if count != len(expected):
            return None
        queries, answers = m.interval_lookups(list(expected))
        return expected if m.holds_exactly(sock, TABLE, name, queries, answers) else None

    @staticmethod
    def _check_hosts(sock: nfnl.NfnlSocket, name: str, wanted: Set[Interval], count: int) -> Set[Interval] | None:
        """A hosts set's elements without dumping it, when the kernel holds no more elements
        than the plan wants: the wanted ones it lacks are looked for (``missing_elements``), and
        if the rest accounts for the set's whole count, that rest is exactly what it holds.
        None when that cannot be shown (a dump is needed)."""
        if count > len(wanted):
            return None
        ordered = list(wanted)
        missing = m.missing_elements(sock, TABLE, name, m.host_elements(ordered), len(wanted) - count)
        if missing is None or len(wanted) - len(missing) != count:
            return None
        return frozenset(wanted - {ordered[i] for i in missing}) if missing else wanted

    @staticmethod
    def _read_set(sock: nfnl.NfnlSocket, name: str, kind: str, family: int) -> frozenset[Interval]:
        elements = m.read_elements(sock, TABLE, name)
        if kind == "networks":
            return m.intervals_from_elements(elements, family)
        return frozenset(Interval(family, k, k) for k in (int.from_bytes(e.key, "big") for e in elements))

    def _remember(self, state: NftState, plan: KernelPlan | None, sets: dict[str, SetRecord]) -> None:
        """Record a state read in full (or just written) as the base for later cheap checks."""
        if not state.consistent or state.table is None:
            self._cache = None
            return
        counts = {name: info.count for name, info in state.table.sets.items()}
        self._cache = DataplaneCache(state.genid, counts, sets, plan)

    @staticmethod
    def _verified_sets(state: NftState, want: NftDesired, batch: _Batch) -> dict[str, SetRecord]:
        """Sets found equal to the plan remember the refuse list they hold."""
        sources = {name: g.refuse for g in want.groups for name in (g.hosts, g.networks)}
        out: dict[str, SetRecord] = {}
        for name, known in state.elements.items():
            if known.intervals is None:
                continue
            change = batch.changes.get(name)
            in_sync = change is not None and not change[0] and not change[1] and name in sources
            out[name] = SetRecord(known.intervals, sources[name] if in_sync else None)
        return out

    # ---- Backend -------------------------------------------------------------------------

    @serialized
    @_netlink_errors
    def diff(self, plan: KernelPlan) -> KernelDiff:
        want = desired(plan, self.log_group)
        with self._session() as sock:
            state = self._read(sock, want, trust_known=False)
        batch = _reconcile(plan, want, state)
        self._remember(state, plan if batch.diff.in_sync else None, self._verified_sets(state, want, batch))
        return batch.diff

    @serialized
    @_netlink_errors
    def quick_diff(self, plan: KernelPlan) -> KernelDiff:
        with self._session() as sock:
            cache = self._cache_here()
            if cache is not None and cache.in_sync_plan is plan and sock.genid() == cache.generation:
                return KernelDiff(self.name, plan.generation, plan.generation)
            want = desired(plan, self.log_group)
            state = self._read(sock, want, trust_known=True)
        batch = _reconcile(plan, want, state)
        if batch.diff.in_sync:  # on drift, keep the old record: the repair needs the same view
            self._remember(state, plan, self._verified_sets(state, want, batch))
        return batch.diff

    @serialized
    @_netlink_errors
    def apply(self, plan: KernelPlan) -> KernelDiff:
        want = desired(plan, self.log_group)
        for attempt in range(5):
            with self._session() as sock:
                state = self._read(sock, want, trust_known=True)
                batch = _reconcile(plan, want, state)
                if not batch.msgs:
                    self._remember(state, plan, self._verified_sets(state, want, batch))
                    return batch.diff
                try:
                    for step, msgs in enumerate([batch.msgs, *batch.then]):
                        sock.commit(msgs, state.genid + step)
                except nfnl.NetlinkError as exc:
                    self._cache = None
                    if exc.errno == errno.ERESTART and attempt < 4:
                        continue  # someone changed the ruleset after our read: read again
                    raise
                self._after_commit(sock, state.genid + 1 + len(batch.then), state, want, batch, plan)
                return batch.diff
        raise KernelError("nftables: the ruleset kept changing while applying")

    def _after_commit(
        self, sock: nfnl.NfnlSocket, expected_genid: int, before: NftState, want: NftDesired, batch: _Batch, plan: KernelPlan
    ) -> None:
        """Remember the sets as written, with the sizes the kernel reports for them now."""
        if sock.genid() != expected_genid:
            self._cache = None
            return
        sets: dict[str, SetRecord] = {}
        for group in want.groups:
            for index, name in enumerate((group.hosts, group.networks)):
                change = batch.changes.get(name)
                old = before.elements[name].intervals if name in before.elements else None
                if change is None or old is None:
                    sets[name] = SetRecord(set(split_hosts(group.refuse)[index]), group.refuse)
                    continue
                add, remove = change
                if add or remove:
                    mutable = old if isinstance(old, set) else set(old)
                    mutable.difference_update(remove)
                    mutable.update(add)
                    old = mutable
                sets[name] = SetRecord(old, group.refuse)
        table = m.read_table(sock, TABLE)
        state = NftState(expected_genid, table, consistent=sock.genid() == expected_genid)
        self._remember(state, plan, sets)

    @serialized
    @_netlink_errors
    def flush(self) -> bool:
        self._cache = None
        for attempt in range(5):
            with self._session() as sock:
                genid = sock.genid()
                if sock.get(nfnl.GETTABLE, m.FAMILY, nfnl.strz(m.TABLE_NAME, TABLE)) is None:
                    return False
                try:
                    sock.commit([m.del_table(TABLE)], genid)
                except nfnl.NetlinkError as exc:
                    if exc.errno == errno.ENOENT:
                        return False
                    if exc.errno == errno.ERESTART and attempt < 4:
                        continue
                    raise
                return True
        raise KernelError("nftables: the ruleset kept changing while flushing")

    @serialized
    @_netlink_errors
    def status(self, plan: KernelPlan | None = None) -> KernelStatus:
        with self._session() as sock:
            genid = sock.genid()
            table = m.read_table(sock, TABLE)
            cache = self._cache_here()
            sizes: dict[str, dict[str, int]] = {}
            for name, info in table.sets.items() if table is not None else ():
                parsed = NAMES.parse(name)
                if parsed is None:
                    continue
                kind, family, lid = parsed
                if kind == "transit":  # holds copies of networks while they are replaced
                    continue
                trusted = cache.trusted(name, info.count, genid) if cache is not None else None
                if info.count is not None:  # hash sets count elements, interval sets intervals
                    count = info.count
                elif trusted is not None:
                    count = len(trusted.intervals or ())
                else:
                    count = len(self._read_set(sock, name, kind, family))
                label = role_label(kind if kind in TIMED else "refuse", family)
                per = sizes.setdefault(lid, {})
                per[label] = per.get(label, 0) + count
        counters = table.counters if table is not None else {}
        refused = {name.removeprefix("refused_"): counter.packets for name, counter in counters.items()}
        installed = {lid for lid in sizes if counter_name(lid) in counters}
        return KernelStatus(self.name, NftState(genid, table).generation(), listener_statuses(plan, sizes, refused, installed))

    @serialized
    @_netlink_errors
    def promote(self, listener: str, address: str, seconds: float) -> None:
        family, name = promotion_set(NAMES, listener, address, seconds, self.max_promote_seconds)
        elem = m.timeout_element(address, seconds)
        # add (so the element exists), delete, add again: replaces an older timeout in one step
        msgs = [
            *m.element_messages(nfnl.NEWSETELEM, TABLE, name, [elem]),
            *m.element_messages(nfnl.DELSETELEM, TABLE, name, [elem]),
            *m.element_messages(nfnl.NEWSETELEM, TABLE, name, [elem]),
        ]
        self._commit_timed(msgs, listener, "promoted", family)

    @serialized
    @_netlink_errors
    def promoted(self) -> list[Promotion]:
        return [Promotion(*found) for found in self._timed("promoted")]

    @serialized
    @_netlink_errors
    def learn(self, listener: str, hosts: Mapping[str, int]) -> None:
        """One transaction for every address; an element already there is left as it is
        (NEWSETELEM without EXCL)."""
        sets = timed_sets(NAMES, "learned", listener, hosts, self.max_promote_seconds)
        msgs = [msg for (_family, name), found in sets.items()
                for msg in m.element_messages(nfnl.NEWSETELEM, TABLE, name, [m.timeout_element(a, t) for a, t in found.items()])]
        if not msgs:
            return
        self._commit_timed(msgs, listener, "learned", min(family for family, _name in sets))

    @serialized
    @_netlink_errors
    def learned(self) -> list[LearnedRefusal]:
        return [LearnedRefusal(*found) for found in self._timed("learned")]

    def _commit_timed(self, msgs: list[nfnl.Message], listener: str, kind: str, family: int) -> None:
        """Commit changes to ``listener``'s ``kind`` timed sets: our own commit, which keeps the
        dataplane cache current (they are not part of it)."""
        for attempt in range(5):
            with self._session() as sock:
                genid = sock.genid()
                try:
                    sock.commit(msgs, genid)
                except nfnl.NetlinkError as exc:
                    if exc.errno == errno.ERESTART and attempt < 4:
                        continue
                    if exc.errno == errno.ENOENT:
                        raise missing_timed_set(listener, kind, family) from exc
                    raise
            cache = self._cache_here()
            if cache is not None:
                cache.own_commit(genid)
            return
        raise KernelError(f"nftables: the ruleset kept changing while adding to the {kind} sets")

    def _timed(self, kind: str) -> list[tuple[str, str, float]]:
        """(listener id, address, seconds left) of every element of the ``kind`` timed sets."""
        out: list[tuple[str, str, float]] = []
        with self._session() as sock:
            table = m.read_table(sock, TABLE)
            for name in table.sets if table is not None else ():
                parsed = NAMES.parse(name)
                if parsed is None or parsed[0] != kind:
                    continue
                for e in m.read_elements(sock, TABLE, name):
                    out.append((parsed[2], str(ipaddress.ip_address(e.key)), (e.expiration_ms or 0) / 1000))
        return out
