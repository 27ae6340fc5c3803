"""The collectives of a compiled program, read from its optimized HLO text.

    collectives(hlo_text, num_devices) -> {kind: {'count': ops executed per step,
                                                  'bytes': bytes of their results on one
                                                           device,
                                                  'wire_bytes': bytes one device sends}}

Kinds: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute (async
`-start` forms counted once, `-done` not), and two forms the TPU compiler gives them:
  - a reduce-scatter is a custom fusion calling `%all-reduce-scatter...` (an all-reduce and
    a slice inside): counted as the reduce-scatter it is (its result, the shard), the
    all-reduce inside it not counted again;
  - an all-gather whose group spans the whole slice is rewritten by libtpu's all-gather
    decomposer into an all-reduce of a zero buffer holding the local shard (its operand a
    dynamic-update-slice, or a fusion whose root is one): counted under
    'all-gather-as-all-reduce' with an all-reduce's wire bytes (what it sends), not under
    all-reduce. An op inside a while loop (nn.scan over layers,
lax.scan of micro-batches) counts once per iteration: XLA records the loop's
`known_trip_count` (XLA:CPU does); otherwise (the TPU compiler) the bound N of a condition
`i < constant(N)` is taken, the induction starting at 0 as a scan's does; a loop with
neither counts once and is reported in 'unknown_trip_loops'.
Bytes are the size of each op's result on one device (for an all-gather the gathered array,
for a reduce-scatter the scattered shard, for an all-reduce the reduced array): the payload,
not the wire traffic of a particular algorithm (a ring all-reduce sends about twice it).
`wire_bytes` is that traffic for bandwidth-optimal (ring) algorithms over each op's group
of g devices: all-gather and all-to-all (g-1)/g of the result, reduce-scatter g-1 times
its shard, all-reduce 2 (g-1)/g of the result (a reduce-scatter then an all-gather),
collective-permute the result. g is read from the op's replica_groups (explicit lists, the
iota form `[groups,g]<=[...]`, or mesh axes `mesh[...] {'axis_0', ...}`); empty groups mean
all `num_devices`.
"""

from __future__ import annotations

import functools
import math
import re

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute',
         'all-gather-as-all-reduce')
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
               's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_HEADER = re.compile(r'^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$')
_INSTR = re.compile(r'^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([\w\-]+)\(')
_ARRAY = re.compile(r'\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]')
_CALLEE = re.compile(r'\b(?:body|calls|to_apply|condition|true_computation|false_computation)'
                     r'=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONDITION = re.compile(r'condition=%?([\w.\-]+)')
_CONST = re.compile(r'= s32\[\][^=]*constant\((\d+)\)')
_GROUPS_LIST = re.compile(r'replica_groups=\{\{([\d,]*)\}')
_GROUPS_IOTA = re.compile(r'replica_groups=\[(\d+),(\d+)\]<=')
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = ')
_OPERAND = re.compile(r' all-reduce(?:-start)?\(%?([\w.\-]+)')
_REDUCE_SCATTER_FUSION = re.compile(r'kind=kCustom, calls=%?(all-reduce-scatter[\w.\-]*)')


def _array_bytes(type_text: str) -> list[int]:
    """Bytes of each array in an HLO type ('f32[8,256]{1,0}' or a tuple of them)."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        size = DTYPE_BYTES.get(dtype, 1 if dtype.startswith('f8') else 4)
        out.append(size * math.prod(int(d) for d in dims.split(',') if d))
    return out


def _scan(line: str, depth: int, quoted: bool) -> tuple[int, bool]:
    """(brace depth, inside a string) after `line`: braces inside "..." do not count."""
    escaped = False
    for ch in line:
        if quoted:
            if escaped:
                escaped = False
            elif ch == '\\':
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == '{':
            depth += 1
        elif ch == '}':
            depth -= 1
    return depth, quoted


def parse_computations(text: str) -> tuple[dict[str, list[str]], str]:
    """HLO module text -> ({computation name: instruction lines}, entry name).

    An instruction whose attributes span lines (a TPU custom call's backend_config: a
    Pallas / Mosaic kernel's text, JSON) is one line here: a physical line is a new
    instruction only outside strings and at the computation's own brace depth, and the
    computation ends where its opening brace closes, not at any line starting with '}'.
    """
    comps, entry, current = {}, '', None
    depth, quoted = 0, False
    for line in text.splitlines():
        continuing = quoted or depth > 1
        if current is None and not continuing:
            m = _HEADER.match(line)
            if m:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
                depth, quoted = _scan(line, 0, False)
                continue
        if current is not None:
            if continuing and comps[current]:
                comps[current][-1] += '\n' + line
            elif depth == 1 and line.strip() and line.strip() != '}':
                comps[current].append(line)
        depth, quoted = _scan(line, depth, quoted)
        if current is not None and depth <= 0 and not quoted:
            current, depth = None, 0
    return comps, entry


def _payload(kind: str, op: str, type_text: str) -> int:
    sizes = _array_bytes(type_text)
    if op.endswith('-start') and kind in ('all-gather', 'collective-permute', 'all-to-all'):
        sizes = sizes[len(sizes) // 2:]  # (operands, results): the results
    return sum(sizes)


def group_size(line: str, num_devices: int) -> int:
    """The number of devices in each replica group of a collective's HLO line."""
    m = _GROUPS_LIST.search(line)
    if m:
        return max(1, len([d for d in m.group(1).split(',') if d]))
    m = _GROUPS_IOTA.search(line)
    if m:
        return int(m.group(2))
    m = _GROUPS_MESH.search(line)
    if m:
        sizes = dict(re.findall(r"'([\w]+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'([\w]+)'", m.group(2)))
    return num_devices


def _wire(kind: str, payload: int, g: int) -> float:
    if kind == 'collective-permute':
        return float(payload)
    if kind == 'reduce-scatter':
        return float(payload * (g - 1))
    return payload * (g - 1) / g * (2 if kind in ('all-reduce', 'all-gather-as-all-reduce')
                                    else 1)


def _root_op(lines: list[str]) -> str:
    for line in lines:
        if line.lstrip().startswith('ROOT '):
            m = _INSTR.match(line)
            return m.group(2) if m else ''
    return ''


def _gathers_a_shard(line: str, producers: dict, comps: dict) -> bool:
    """Whether the all-reduce on `line` reduces a dynamic-update-slice (one device's shard
    placed in a zero buffer: an all-gather the TPU compiler decomposed). producers: the
    computation's {instruction name: line}."""
    m = _OPERAND.search(line)
    p = _INSTR.match(producers.get(m.group(1), '')) if m else None
    if not p:
        return False
    if p.group(2) == 'dynamic-update-slice':
        return True
    callee = _CALLEE.search(producers[m.group(1)])
    return (p.group(2) == 'fusion' and callee is not None
            and _root_op(comps.get(callee.group(1), [])) == 'dynamic-update-slice')


def _inner_group(name: str, comps: dict, num_devices: int) -> int:
    """The replica group size of the all-reduce inside a reduce-scatter fusion."""
    for line in comps.get(name, []):
        if ' all-reduce(' in line:
            return group_size(line, num_devices)
    return num_devices


def _trip_count(line: str, comps: dict) -> int | None:
    t = _TRIP.search(line)
    if t:
        return int(t.group(1))
    cond = _CONDITION.search(line)
    body = comps.get(cond.group(1), []) if cond else []
    bounds = [int(c) for l in body for c in _CONST.findall(l)]
    compares = [l for l in body if 'compare(' in l and 'direction=LT' in l]
    return bounds[0] if len(bounds) == 1 and len(compares) == 1 else None


def collectives(text: str, num_devices: int = 1) -> dict:
    comps, entry = parse_computations(text)
    totals = {k: {'count': 0, 'bytes': 0, 'wire_bytes': 0.0} for k in KINDS}
    unknown = []

    @functools.cache
    def producers(name: str) -> dict:
        return {n.group(1): x for x in comps[name] if (n := _NAME.match(x))}

    def add(kind, times, payload, g):
        totals[kind]['count'] += times
        totals[kind]['bytes'] += times * payload
        totals[kind]['wire_bytes'] += times * _wire(kind, payload, g)

    def visit(name: str, times: int, depth: int = 0):
        if depth > 64 or name not in comps:
            return
        for line in comps[name]:
            m = _INSTR.match(line)
            if not m:
                continue
            type_text, op = m.groups()
            kind = op[:-len('-start')] if op.endswith('-start') else op
            scatter = _REDUCE_SCATTER_FUSION.search(line) if op == 'fusion' else None
            if scatter:
                payload = sum(_array_bytes(type_text))
                g = _inner_group(scatter.group(1), comps, num_devices)
                add('reduce-scatter', times, payload, g)
                continue  # its inner all-reduce is this reduce-scatter
            if kind == 'all-reduce' and _gathers_a_shard(line, producers(name), comps):
                kind = 'all-gather-as-all-reduce'
            if kind in totals:
                add(kind, times, _payload(kind, op, type_text), group_size(line, num_devices))
            trip = _trip_count(line, comps) if op == 'while' else 1
            if trip is None:
                unknown.append(name)
                trip = 1
            for callee in _CALLEE.findall(line):
                is_body = op == 'while' and f'body=%{callee}' in line or f'body={callee}' in line
                visit(callee, times * (trip if is_body else 1), depth + 1)
            for group in _BRANCHES.findall(line):
                for callee in re.findall(r'%?([\w.\-]+)', group):
                    visit(callee, times, depth + 1)

    visit(entry, 1)
    return dict(totals, unknown_trip_loops=len(unknown))
