"""nf_tables objects as netlink messages: the encoders and decoders the nftables backend needs.

Only what netpolicy installs is covered: one inet table, one base chain, interval and timeout
sets of addresses, named counters, and rules built from meta/payload/cmp/bitwise/lookup/
objref/reject expressions. Rules are compared as parsed expression lists (see ``same_exprs``),
so a rule someone edited with ``nft`` shows up as modified.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from netpolicy.kernel import nfnl
from netpolicy.kernel.nfnl import (
    Message,
    attrs,
    be32,
    be64,
    get_be32,
    get_be64,
    get_str,
    iter_attrs,
    nest,
    strz,
)
from netpolicy.model.intervals import Interval

FAMILY = nfnl.NFPROTO_INET

# attribute numbers (include/uapi/linux/netfilter/nf_tables.h)
TABLE_NAME, TABLE_USERDATA = 1, 6
CHAIN_TABLE, CHAIN_HANDLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE, CHAIN_USERDATA = 1, 2, 3, 4, 5, 7, 12
HOOK_HOOKNUM, HOOK_PRIORITY = 1, 2
RULE_TABLE, RULE_CHAIN, RULE_HANDLE, RULE_EXPRESSIONS, RULE_USERDATA = 1, 2, 3, 4, 7
SET_TABLE, SET_NAME, SET_FLAGS, SET_KEY_TYPE, SET_KEY_LEN, SET_ID, SET_USERDATA, SET_COUNT = 1, 2, 3, 4, 5, 10, 13, 20
ELIST_TABLE, ELIST_SET, ELIST_ELEMENTS, ELIST_SET_ID = 1, 2, 3, 4
ELEM_KEY, ELEM_FLAGS, ELEM_TIMEOUT, ELEM_EXPIRATION = 1, 3, 4, 5
OBJ_TABLE, OBJ_NAME, OBJ_TYPE, OBJ_DATA, OBJ_USERDATA = 1, 2, 3, 4, 8
COUNTER_BYTES, COUNTER_PACKETS = 1, 2
LIST_ELEM = 1
EXPR_NAME, EXPR_DATA = 1, 2
DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFT_REG_VERDICT = 0
NFT_GOTO = -4

NF_INET_LOCAL_IN = 1
NF_ACCEPT = 1
NFT_SET_INTERVAL = 0x4
NFT_SET_TIMEOUT = 0x10
NFT_SET_ELEM_INTERVAL_END = 0x1
NFT_OBJECT_COUNTER = 1
TYPE_IPADDR, TYPE_IP6ADDR = 7, 8
UDATA_COMMENT = 0  # table, chain, rule and object comments
UDATA_SET_KEYBYTEORDER, UDATA_SET_COMMENT = 0, 7
BYTEORDER_BIG_ENDIAN = 2

META_NFPROTO, META_L4PROTO = 15, 16
PAYLOAD_NETWORK, PAYLOAD_TRANSPORT = 1, 2
REG_1 = 1
CMP_EQ = 0
REJECT_TCP_RST = 1
TCP_FLAGS_MASK = 0x17  # fin|syn|rst|ack
TCP_SYN = 0x02


def comment_udata(text: str, kind: int = UDATA_COMMENT) -> bytes:
    return nfnl.udata((kind, text.encode()[:250] + b"\0"))


def udata_comment(blob: bytes | None, kind: int = UDATA_COMMENT) -> str | None:
    if not blob:
        return None
    value = nfnl.parse_udata(blob).get(kind)
    return value.rstrip(b"\0").decode(errors="replace") if value is not None else None


# ---- expressions -----------------------------------------------------------------------------

Expr = tuple[str, dict[int, bytes]]


def _expr(name: str, *parts: bytes) -> Expr:
    return name, dict(iter_attrs(b"".join(parts)))


def meta(key: int) -> Expr:
    return _expr("meta", be32(1, REG_1), be32(2, key))


def cmp_eq(value: bytes) -> Expr:
    return _expr("cmp", be32(1, REG_1), be32(2, CMP_EQ), nest(3, nfnl.attr(DATA_VALUE, value)))


def payload(base: int, offset: int, length: int) -> Expr:
    return _expr("payload", be32(1, REG_1), be32(2, base), be32(3, offset), be32(4, length))


def bitwise(mask: bytes, xor: bytes) -> Expr:
    return _expr(
        "bitwise", be32(1, REG_1), be32(2, REG_1), be32(3, len(mask)),
        nest(4, nfnl.attr(DATA_VALUE, mask)), nest(5, nfnl.attr(DATA_VALUE, xor)),
    )


def lookup(set_name: str) -> Expr:
    return _expr("lookup", strz(1, set_name), be32(2, REG_1))


def objref_counter(name: str) -> Expr:
    return _expr("objref", be32(1, NFT_OBJECT_COUNTER), strz(2, name))


def reject_tcp_reset() -> Expr:
    return _expr("reject", be32(1, REJECT_TCP_RST))


def limit_packets(rate_per_second: int, burst: int) -> Expr:
    return _expr("limit", be64(1, rate_per_second), be64(2, 1), be32(3, burst), be32(4, 0), be32(5, 0))


def log_group(group: int, prefix: str) -> Expr:
    return _expr("log", nfnl.attr(1, struct.pack(">H", group)), strz(2, prefix))


def goto(chain: str) -> Expr:
    # nested without NLA_F_NESTED, as the kernel dumps it, so the raw payloads compare equal
    verdict = nfnl.attr(NFTA_DATA_VERDICT, be32(1, NFT_GOTO & 0xFFFFFFFF) + strz(2, chain))
    return _expr("immediate", be32(1, NFT_REG_VERDICT), nfnl.attr(2, verdict))


def match_exprs(family: int, daddr: str | None, port: int, set_name: str) -> list[Expr]:
    """``meta l4proto tcp [ip daddr A] tcp dport P tcp flags & (fin|syn|rst|ack) == syn
    ip saddr @set`` (ip6 for family 6).

    Only connection attempts (a bare SYN) are matched: a host added to the set while it has a
    session open keeps that session, as with the appliance, where the HAT applies at connect.
    """
    nfproto = nfnl.NFPROTO_IPV4 if family == 4 else nfnl.NFPROTO_IPV6
    saddr_off, daddr_off, alen = (12, 16, 4) if family == 4 else (8, 24, 16)
    exprs = [meta(META_L4PROTO), cmp_eq(b"\x06"), meta(META_NFPROTO), cmp_eq(bytes([nfproto]))]
    if daddr is not None:
        exprs += [payload(PAYLOAD_NETWORK, daddr_off, alen), cmp_eq(ipaddress.ip_address(daddr).packed)]
    return [
        *exprs,
        payload(PAYLOAD_TRANSPORT, 2, 2), cmp_eq(struct.pack(">H", port)),
        payload(PAYLOAD_TRANSPORT, 13, 1), bitwise(bytes([TCP_FLAGS_MASK]), b"\x00"), cmp_eq(bytes([TCP_SYN])),
        payload(PAYLOAD_NETWORK, saddr_off, alen), lookup(set_name),
    ]


def log_exprs(group: int, prefix: str, rate_per_second: int, burst: int) -> list[Expr]:
    """``meta l4proto tcp limit rate R/second burst B packets log prefix P group G``."""
    return [meta(META_L4PROTO), cmp_eq(b"\x06"), limit_packets(rate_per_second, burst), log_group(group, prefix)]


def reject_exprs(counter: str) -> list[Expr]:
    """``meta l4proto tcp counter name C reject with tcp reset``."""
    return [meta(META_L4PROTO), cmp_eq(b"\x06"), objref_counter(counter), reject_tcp_reset()]


def encode_exprs(exprs: Iterable[Expr]) -> bytes:
    out = []
    for name, data in exprs:
        body = b"".join(nfnl.attr(k, v) for k, v in data.items())
        out.append(nest(LIST_ELEM, strz(EXPR_NAME, name), nest(EXPR_DATA, body)))
    return b"".join(out)


def decode_exprs(blob: bytes) -> list[Expr]:
    out: list[Expr] = []
    for _kind, elem in iter_attrs(blob):
        a = attrs(elem)
        out.append((get_str(a, EXPR_NAME) or "", attrs(a.get(EXPR_DATA, b""))))
    return out


def same_exprs(kernel: list[Expr], wanted: list[Expr]) -> bool:
    """True when the kernel's expressions are the ones we would write.

    The kernel may dump attributes we never send (defaults such as lookup flags); those count
    as equal only when they are zero, so an inverted lookup (``!= @set``) is still a change.
    """
    if len(kernel) != len(wanted):
        return False
    for (kname, kdata), (wname, wdata) in zip(kernel, wanted, strict=True):
        if kname != wname:
            return False
        for key in kdata.keys() | wdata.keys():
            have, want = kdata.get(key), wdata.get(key)
            if have == want:
                continue
            if want is None and have is not None and not any(have):
                continue
            return False
    return True


# ---- messages --------------------------------------------------------------------------------


def new_table(name: str, comment: str) -> Message:
    return Message(nfnl.NEWTABLE, FAMILY, strz(TABLE_NAME, name) + nfnl.attr(TABLE_USERDATA, comment_udata(comment)), nfnl.NLM_F_CREATE)


def del_table(name: str) -> Message:
    return Message(nfnl.DELTABLE, FAMILY, strz(TABLE_NAME, name))


def new_chain(table: str, name: str, priority: int | None) -> Message:
    """A base chain on the input hook (policy accept) or, with ``priority`` None, a regular one."""
    body = strz(CHAIN_TABLE, table) + strz(CHAIN_NAME, name)
    if priority is not None:
        body += (
            nest(CHAIN_HOOK, be32(HOOK_HOOKNUM, NF_INET_LOCAL_IN), be32(HOOK_PRIORITY, priority))
            + be32(CHAIN_POLICY, NF_ACCEPT) + strz(CHAIN_TYPE, "filter")
        )
    return Message(nfnl.NEWCHAIN, FAMILY, body, nfnl.NLM_F_CREATE)


def del_chain(table: str, name: str) -> Message:
    return Message(nfnl.DELCHAIN, FAMILY, strz(CHAIN_TABLE, table) + strz(CHAIN_NAME, name))


def new_rule(table: str, chain: str, exprs: list[Expr], comment: str) -> Message:
    body = (
        strz(RULE_TABLE, table) + strz(RULE_CHAIN, chain)
        + nest(RULE_EXPRESSIONS, encode_exprs(exprs)) + nfnl.attr(RULE_USERDATA, comment_udata(comment))
    )
    return Message(nfnl.NEWRULE, FAMILY, body, nfnl.NLM_F_CREATE | nfnl.NLM_F_APPEND)


def replace_rule(table: str, chain: str, handle: int, exprs: list[Expr], comment: str) -> Message:
    """The same rule with a new comment, swapped in place (NLM_F_REPLACE on its handle): a new
    generation is stamped without deleting and re-adding every rule. (Session 1 blamed such
    re-adds for SYNs let through during re-applies; the cause turned out to be set moves, see
    ``nftables._element_phases``. Replacing in place is still the smaller change.)"""
    body = (
        strz(RULE_TABLE, table) + strz(RULE_CHAIN, chain) + be64(RULE_HANDLE, handle)
        + nest(RULE_EXPRESSIONS, encode_exprs(exprs)) + nfnl.attr(RULE_USERDATA, comment_udata(comment))
    )
    return Message(nfnl.NEWRULE, FAMILY, body, nfnl.NLM_F_REPLACE)


def del_rule(table: str, chain: str, handle: int) -> Message:
    return Message(nfnl.DELRULE, FAMILY, strz(RULE_TABLE, table) + strz(RULE_CHAIN, chain) + be64(RULE_HANDLE, handle))


def new_counter(table: str, name: str, comment: str) -> Message:
    body = (
        strz(OBJ_TABLE, table) + strz(OBJ_NAME, name) + be32(OBJ_TYPE, NFT_OBJECT_COUNTER)
        + nest(OBJ_DATA, be64(COUNTER_BYTES, 0), be64(COUNTER_PACKETS, 0))
        + nfnl.attr(OBJ_USERDATA, comment_udata(comment))
    )
    return Message(nfnl.NEWOBJ, FAMILY, body, nfnl.NLM_F_CREATE)


def del_counter(table: str, name: str) -> Message:
    return Message(nfnl.DELOBJ, FAMILY, strz(OBJ_TABLE, table) + strz(OBJ_NAME, name) + be32(OBJ_TYPE, NFT_OBJECT_COUNTER))


@dataclass(frozen=True)
class SetSpec:
    """The shape of one of our sets: address family and interval or timeout flags."""

    family: int
    flags: int

    @property
    def key_type(self) -> int:
        return TYPE_IPADDR if self.family == 4 else TYPE_IP6ADDR

    @property
    def key_len(self) -> int:
        return 4 if self.family == 4 else 16


def new_set(table: str, name: str, spec: SetSpec, set_id: int, comment: str) -> Message:
    ud = nfnl.udata(
        (UDATA_SET_KEYBYTEORDER, struct.pack("=I", BYTEORDER_BIG_ENDIAN)),
        (UDATA_SET_COMMENT, comment.encode()[:250] + b"\0"),
    )
    body = (
        strz(SET_TABLE, table) + strz(SET_NAME, name) + be32(SET_FLAGS, spec.flags)
        + be32(SET_KEY_TYPE, spec.key_type) + be32(SET_KEY_LEN, spec.key_len)
        + be32(SET_ID, set_id) + nfnl.attr(SET_USERDATA, ud)
    )
    return Message(nfnl.NEWSET, FAMILY, body, nfnl.NLM_F_CREATE)


def del_set(table: str, name: str) -> Message:
    return Message(nfnl.DELSET, FAMILY, strz(SET_TABLE, table) + strz(SET_NAME, name))


# Element templates: LIST_ELEM { KEY { VALUE addr } [FLAGS INTERVAL_END] }, with lengths fixed
# per family, so that encoding a million elements is one bytes concatenation each.
def _elem_prefix(alen: int, end: bool) -> bytes:
    key = 4 + 4 + alen
    total = 4 + key + (8 if end else 0)
    return struct.pack("=HH", total, LIST_ELEM | nfnl.NLA_F_NESTED) + struct.pack("=HH", key, ELEM_KEY | nfnl.NLA_F_NESTED) + struct.pack("=HH", 4 + alen, DATA_VALUE)


_END_FLAG = be32(ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END)
_PREFIX = {(a, e): _elem_prefix(a, e) for a in (4, 16) for e in (False, True)}


def interval_elements(intervals: Iterable[Interval]) -> list[bytes]:
    """Kernel elements of an interval (rbtree) set, one bytes object per interval: a start key,
    then the first address past the end flagged INTERVAL_END (left out when the interval runs
    to the last address). Built by plain concatenation: a million intervals take about a second.
    """
    out: list[bytes] = []
    append = out.append
    for version, first, last in intervals:
        alen = 4 if version == 4 else 16
        start = _PREFIX[alen, False] + first.to_bytes(alen, "big")
        if last == (1 << (8 * alen)) - 1:
            append(start)
        else:
            append(start + _PREFIX[alen, True] + (last + 1).to_bytes(alen, "big") + _END_FLAG)
    return out


def host_elements(intervals: Iterable[Interval]) -> list[bytes]:
    """Kernel elements of a hash set of single addresses (intervals whose first == last)."""
    out: list[bytes] = []
    append = out.append
    pre4, pre6 = _PREFIX[4, False], _PREFIX[16, False]
    pack4 = struct.Struct(">I").pack
    for version, first, _last in intervals:
        append(pre4 + pack4(first) if version == 4 else pre6 + first.to_bytes(16, "big"))
    return out


def flush_set(table: str, set_name: str) -> Message:
    """Delete every element of a set (inside a transaction, before re-adding them)."""
    return Message(nfnl.DELSETELEM, FAMILY, strz(ELIST_TABLE, table) + strz(ELIST_SET, set_name))


def timeout_element(address: str, seconds: float) -> bytes:
    packed = ipaddress.ip_address(address).packed
    return nest(LIST_ELEM, nest(ELEM_KEY, nfnl.attr(DATA_VALUE, packed)), be64(ELEM_TIMEOUT, int(seconds * 1000)))


# Element lists go into one 16-bit-length attribute per message: at most this many bytes each.
ELEMENT_BYTES = 60000


def element_messages(kind: int, table: str, set_name: str, elements: list[bytes], set_id: int | None = None) -> list[Message]:
    head = strz(ELIST_TABLE, table) + strz(ELIST_SET, set_name)
    if set_id is not None:
        head += be32(ELIST_SET_ID, set_id)
    flags = nfnl.NLM_F_CREATE if kind == nfnl.NEWSETELEM else 0
    return [Message(kind, FAMILY, head + nest(ELIST_ELEMENTS, blob), flags) for blob in nfnl.chunked(elements, ELEMENT_BYTES)]


# ---- decoding dumps --------------------------------------------------------------------------


@dataclass
class ChainInfo:
    name: str
    hooknum: int | None
    priority: int | None
    policy: int | None
    type: str | None


@dataclass
class RuleInfo:
    handle: int
    chain: str
    exprs: list[Expr]
    comment: str | None


@dataclass
class SetInfo:
    name: str
    flags: int
    key_type: int
    key_len: int
    count: int | None  # NFTA_SET_COUNT; None on kernels that do not report it


@dataclass
class CounterInfo:
    name: str
    packets: int
    bytes: int


@dataclass
class Element:
    key: bytes
    flags: int = 0
    expiration_ms: int | None = None


@dataclass
class TableDump:
    """Everything in our table except set elements."""

    comment: str | None
    chains: dict[str, ChainInfo] = field(default_factory=dict)
    rules: list[RuleInfo] = field(default_factory=list)
    sets: dict[str, SetInfo] = field(default_factory=dict)
    counters: dict[str, CounterInfo] = field(default_factory=dict)


def _table_filter(kind: int, table: str) -> bytes:
    return strz(kind, table)


def read_table(sock: nfnl.NfnlSocket, table: str) -> TableDump | None:
    raw = sock.get(nfnl.GETTABLE, FAMILY, strz(TABLE_NAME, table))
    if raw is None:
        return None
    dump = TableDump(udata_comment(attrs(raw).get(TABLE_USERDATA)))
    for p in sock.dump(nfnl.GETCHAIN, FAMILY, _table_filter(CHAIN_TABLE, table)):
        a = attrs(p)
        if get_str(a, CHAIN_TABLE) != table:
            continue
        hook = attrs(a[CHAIN_HOOK]) if CHAIN_HOOK in a else {}
        prio = get_be32(hook, HOOK_PRIORITY) if HOOK_PRIORITY in hook else None
        name = get_str(a, CHAIN_NAME) or ""
        dump.chains[name] = ChainInfo(
            name,
            get_be32(hook, HOOK_HOOKNUM) if HOOK_HOOKNUM in hook else None,
            None if prio is None else struct.unpack(">i", struct.pack(">I", prio))[0],
            get_be32(a, CHAIN_POLICY) if CHAIN_POLICY in a else None,
            get_str(a, CHAIN_TYPE),
        )
    for p in sock.dump(nfnl.GETRULE, FAMILY, _table_filter(RULE_TABLE, table)):
        a = attrs(p)
        if get_str(a, RULE_TABLE) != table:
            continue
        dump.rules.append(RuleInfo(
            get_be64(a, RULE_HANDLE), get_str(a, RULE_CHAIN) or "",
            decode_exprs(a.get(RULE_EXPRESSIONS, b"")), udata_comment(a.get(RULE_USERDATA)),
        ))
    for p in sock.dump(nfnl.GETSET, FAMILY, _table_filter(SET_TABLE, table)):
        a = attrs(p)
        if get_str(a, SET_TABLE) != table:
            continue
        name = get_str(a, SET_NAME) or ""
        dump.sets[name] = SetInfo(
            name, get_be32(a, SET_FLAGS), get_be32(a, SET_KEY_TYPE), get_be32(a, SET_KEY_LEN),
            get_be32(a, SET_COUNT) if SET_COUNT in a else None,
        )
    for p in sock.dump(nfnl.GETOBJ, FAMILY, _table_filter(OBJ_TABLE, table) + be32(OBJ_TYPE, NFT_OBJECT_COUNTER)):
        a = attrs(p)
        if get_str(a, OBJ_TABLE) != table or get_be32(a, OBJ_TYPE) != NFT_OBJECT_COUNTER:
            continue
        data = attrs(a.get(OBJ_DATA, b""))
        name = get_str(a, OBJ_NAME) or ""
        dump.counters[name] = CounterInfo(name, get_be64(data, COUNTER_PACKETS), get_be64(data, COUNTER_BYTES))
    return dump


def read_elements(sock: nfnl.NfnlSocket, table: str, set_name: str) -> list[Element]:
    out: list[Element] = []
    body = strz(ELIST_TABLE, table) + strz(ELIST_SET, set_name)
    for p in sock.dump(nfnl.GETSETELEM, FAMILY, body):
        a = attrs(p)
        for _kind, raw in iter_attrs(a.get(ELIST_ELEMENTS, b"")):
            e = attrs(raw)
            key = attrs(e.get(ELEM_KEY, b"")).get(DATA_VALUE, b"")
            exp = get_be64(e, ELEM_EXPIRATION) if ELEM_EXPIRATION in e else None
            out.append(Element(key, get_be32(e, ELEM_FLAGS), exp))
    return out


def missing_elements(sock: nfnl.NfnlSocket, table: str, set_name: str, elements: Sequence[bytes], limit: int) -> list[int] | None:
    """Positions in ``elements`` of those the set does not hold, found with get requests
    (``NfnlSocket.ask``), or None once more than ``limit`` are missing."""
    head = strz(ELIST_TABLE, table) + strz(ELIST_SET, set_name)
    step = nfnl.chunk_length(elements, ELEMENT_BYTES)
    out: list[int] = []
    pos = 0
    while pos < len(elements):
        batch = elements[pos : pos + step]
        answered, err = sock.ask(Message(nfnl.GETSETELEM, FAMILY, head + nest(ELIST_ELEMENTS, b"".join(batch))))
        if not err:
            pos += len(batch)
            continue
        if err != errno.ENOENT:
            raise nfnl.NetlinkError(err, "", f"get elements of set {set_name}")
        if len(out) == limit:
            return None
        out.append(pos + answered)
        pos += answered + 1
    return out


def interval_lookups(intervals: Sequence[Interval]) -> tuple[list[bytes], list[bytes]]:
    """Get requests proving that an interval set holds ``intervals`` as they are, and the
    answers that prove it (the ``ELIST_ELEMENTS`` attribute ending each answer, in order).

    Per interval, two lookups: its last address, which an interval (rbtree) set answers with
    the closest element at or below it, so only the interval's own start element there shows
    that no element lies inside it; then its end key flagged INTERVAL_END, answered only by
    that end element itself (none for an interval running to the family's last address).
    With the set's count equal to the number of intervals (the kernel counts start elements),
    no other interval can be there. An end element alone in a gap cannot be seen, and
    changes no lookup's result.
    """
    queries: list[bytes] = []
    answers: list[bytes] = []
    query, answer = queries.append, answers.append
    q_start, q_end, a_start, a_end, flag = _PREFIX[4, False], _PREFIX[4, True], _ANSWER[4, False], _ANSWER[4, True], _END_FLAG
    pack4 = struct.Struct(">I").pack
    for version, first, last in intervals:
        if version == 4 and last != 0xFFFFFFFF:  # the common case, inlined: 1M intervals in ~0.6 s
            end = pack4(last + 1) + flag
            query(q_start + pack4(last))
            answer(a_start + pack4(first))
            query(q_end + end)
            answer(a_end + end)
            continue
        alen = 4 if version == 4 else 16
        query(_PREFIX[alen, False] + last.to_bytes(alen, "big"))
        answer(_ANSWER[alen, False] + first.to_bytes(alen, "big"))
        if last != (1 << (8 * alen)) - 1:
            end = (last + 1).to_bytes(alen, "big")
            query(_PREFIX[alen, True] + end + _END_FLAG)
            answer(_ANSWER[alen, True] + end + _END_FLAG)
    return queries, answers


def _answer_prefix(alen: int, end: bool) -> bytes:
    """An element as the kernel answers a get, up to its key: nests without NLA_F_NESTED."""
    key = 4 + 4 + alen
    elem = 4 + key + (8 if end else 0)
    return struct.pack("=HHHHHHHH", 4 + elem, ELIST_ELEMENTS, elem, LIST_ELEM, key, ELEM_KEY, 4 + alen, DATA_VALUE)


_ANSWER = {(a, e): _answer_prefix(a, e) for a in (4, 16) for e in (False, True)}


def holds_exactly(sock: nfnl.NfnlSocket, table: str, set_name: str, queries: Sequence[bytes], answers: Sequence[bytes]) -> bool:
    """Whether every get in ``queries`` is answered with the matching entry of ``answers``
    (``interval_lookups``), in batched requests."""
    head = strz(ELIST_TABLE, table) + strz(ELIST_SET, set_name)
    step = nfnl.chunk_length(queries, ELEMENT_BYTES)
    for pos in range(0, len(queries), step):
        batch = queries[pos : pos + step]
        count, err, ok = sock.ask_expecting(Message(nfnl.GETSETELEM, FAMILY, head + nest(ELIST_ELEMENTS, b"".join(batch))), answers, pos)
        if err == errno.ENOENT or not ok or count != len(batch):
            return False
        if err:
            raise nfnl.NetlinkError(err, "", f"get elements of set {set_name}")
    return True


def intervals_from_elements(elements: Iterable[Element], version: int) -> frozenset[Interval]:
    """Rebuild intervals from rbtree elements (start keys and INTERVAL_END keys)."""
    points = sorted((int.from_bytes(e.key, "big"), 0 if e.flags & NFT_SET_ELEM_INTERVAL_END else 1) for e in elements)
    top = (1 << 32) - 1 if version == 4 else (1 << 128) - 1
    out: set[Interval] = set()
    start: int | None = None
    for key, is_start in points:
        if is_start:
            if start is not None:  # a start without an end before it: close it just below this one
                out.add(Interval(version, start, key - 1))
            start = key
        elif start is not None:
            out.add(Interval(version, start, key - 1))
            start = None
    if start is not None:
        out.add(Interval(version, start, top))
    return frozenset(out)
