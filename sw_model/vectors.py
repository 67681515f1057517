"""Vector files: a VM configuration, a sparse memory image and a list of accesses.

The same file runs on the model (``python -m sw_model run``) and on the RTL
(``python -m hw run``); both print one JSON result per access in the same shape, so a
failing case replays anywhere. The shape of a file::

    {"tdpwalk_vectors": 1,
     "format": "ept4",
     "vm": {"ad": "hardware", "pa_bits": 46, "exec_only": true, "nxe": true},
     "root": "0x1000",
     "memory": {"base": "0x0", "size": "0x800000",
                "words": {"0x1000": "0x2007", ...},
                "bus_errors": ["0x3008", ...]},
     "accesses": [{"gpa": "0x12345678", "access": "read"}, ...],
     "seed": 1}

Numbers may be JSON integers or strings in any base Python's ``int(s, 0)`` reads.
"""

import json
import random
from dataclasses import dataclass, field

from .formats import ACCESSES, FormatError, get_format
from .memory import HostMemory, PAGE_SIZE
from .walker import translate

__all__ = ["VectorFile", "VectorFileError", "load_vectors", "save_vectors", "run_vectors",
           "random_vectors", "result_lines", "write_results", "VERSION"]

VERSION = 1
_DEFAULT_MEMORY = 8 << 20
#: The largest memory a vector file may back. Only table pages need storage, so 1 GiB is
#: far beyond any real file; a typo in ``size`` fails here instead of exhausting the host.
MAX_MEMORY = 1 << 30
_TOP_FIELDS = ("tdpwalk_vectors", "format", "vm", "root", "memory", "accesses", "seed")
_VM_FIELDS = ("ad", "pa_bits", "exec_only", "nxe")
_MEMORY_FIELDS = ("base", "size", "words", "bus_errors")
_ACCESS_FIELDS = ("gpa", "access")


class VectorFileError(ValueError):
    """A vector file that cannot be used: ``FIELD: PROBLEM``, plus ``(in PATH)`` when it
    was read from a file, so a message alone says what to fix where.

    Members
    -------
    field : str
        Where in the file, as a path (``accesses[3].gpa``, ``memory.words[0x1000]``).
    problem : str
    path : str or None
    """

    def __init__(self, field, problem, path=None):
        self.field, self.problem, self.path = field, problem, path
        where = f" (in {path})" if path is not None else ""
        super().__init__(f"{field}: {problem}{where}")


@dataclass
class VectorFile:
    """A loaded vector file.

    Members
    -------
    fmt : PageTableFormat
    vm : VmOptions
    root : int
    memory : HostMemory
        Built from the sparse image; page-table pages holding words are marked in use.
    accesses : list of (gpa, access)
    seed : int or None
    bus_errors : list of int
        Word addresses that answer with a bus error (poisoned in ``memory``).
    """
    fmt: object
    vm: object
    root: int
    memory: HostMemory
    accesses: list
    seed: int = None
    bus_errors: list = field(default_factory=list)

    def to_json(self):
        words = self.memory.nonzero_words()
        return {
            "tdpwalk_vectors": VERSION,
            "format": self.fmt.name,
            "vm": self.vm.to_json(),
            "root": f"{self.root:#x}",
            "memory": {"base": f"{self.memory.base:#x}", "size": f"{self.memory.capacity:#x}",
                       "words": {f"{a:#x}": f"{w:#x}" for a, w in sorted(words.items())},
                       "bus_errors": [f"{a:#x}" for a in self.bus_errors]},
            "accesses": [{"gpa": f"{g:#x}", "access": a} for g, a in self.accesses],
            "seed": self.seed,
        }


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}


def _type_name(value):
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def _number(value, where, bits=64):
    """A non-negative integer below ``2**bits``: a JSON integer, or a string in any base
    ``int(s, 0)`` reads."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise VectorFileError(where, f"expected a number, got {_type_name(value)}")
    if isinstance(value, int):
        result = value
    else:
        try:
            result = int(value, 0)
        except ValueError:
            raise VectorFileError(where, f"{value!r} is not a number") from None
    if result < 0:
        raise VectorFileError(where, f"{value!r} is negative")
    if result >= 1 << bits:
        raise VectorFileError(where, f"{result:#x} does not fit in {bits} bits")
    return result


def _object(value, where, known):
    """``value`` as a dict with no field outside ``known`` (a typo is an error, not a
    silently missing field)."""
    if not isinstance(value, dict):
        raise VectorFileError(where, f"expected an object, got {_type_name(value)}")
    unknown = [key for key in value if key not in known]
    if unknown:
        raise VectorFileError(where, f"unknown field(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")
    return value


def _require(obj, key, where):
    if key not in obj:
        raise VectorFileError(where, f"missing field {key!r}")
    return obj[key]


def _no_duplicates(pairs):
    """``json.load``'s ``object_pairs_hook``: a key given twice is an error (JSON
    would keep the last one silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise VectorFileError(f"key {key!r}", "given twice in one object")
        out[key] = value
    return out


def load_vectors(source):
    """Load and validate a vector file from a path or an already parsed ``dict``.

    Every field is checked; :class:`VectorFileError` names the first bad one. A GPA
    beyond the format's GPA width is valid: the walk answers with a ``gpa_range`` fault.
    """
    if isinstance(source, dict):
        return _parse(source)
    try:
        with open(source) as f:
            data = json.load(f, object_pairs_hook=_no_duplicates)
    except OSError as e:
        raise VectorFileError("vector file", f"cannot read it: {e.strerror or e}",
                              source) from None
    except UnicodeDecodeError as e:
        raise VectorFileError("vector file", f"not text ({e.reason})", source) from None
    except json.JSONDecodeError as e:
        raise VectorFileError("vector file", f"not valid JSON ({e})", source) from None
    except VectorFileError as e:
        raise VectorFileError(e.field, e.problem, source) from None
    try:
        return _parse(data)
    except VectorFileError as e:
        raise VectorFileError(e.field, e.problem, source) from None


def _parse(data):
    data = _object(data, "vector file", _TOP_FIELDS)
    version = data.get("tdpwalk_vectors")
    if type(version) is not int or version != VERSION:
        raise VectorFileError("tdpwalk_vectors", f"expected version {VERSION}, got "
                              f"{json.dumps(version) if version is not None else 'nothing'}")

    name = _require(data, "format", "vector file")
    try:
        fmt = get_format(name)
    except FormatError as e:
        raise VectorFileError("format", str(e)) from None
    vm_json = _object(data.get("vm", {}), "vm", _VM_FIELDS)
    for key in ("exec_only", "nxe"):
        if key in vm_json and not isinstance(vm_json[key], bool):
            raise VectorFileError(f"vm.{key}", f"expected true or false, got "
                                  f"{json.dumps(vm_json[key])}")
    if vm_json.get("ad") is not None and not isinstance(vm_json["ad"], str):
        raise VectorFileError("vm.ad", f"expected a string, got {_type_name(vm_json['ad'])}")
    pa_bits = vm_json.get("pa_bits")
    if pa_bits is not None and (isinstance(pa_bits, bool) or not isinstance(pa_bits, int)):
        raise VectorFileError("vm.pa_bits", f"expected an integer, got {_type_name(pa_bits)}")
    try:
        vm = fmt.vm_options(**vm_json)
    except FormatError as e:
        raise VectorFileError("vm", str(e)) from None

    mem_json = _object(_require(data, "memory", "vector file"), "memory", _MEMORY_FIELDS)
    base = _number(mem_json.get("base", 0), "memory.base")
    size = _number(mem_json.get("size", _DEFAULT_MEMORY), "memory.size")
    if size > MAX_MEMORY:
        raise VectorFileError("memory.size", f"{size:#x} bytes is more than a vector file "
                              f"may back ({MAX_MEMORY:#x})")
    try:
        memory = HostMemory(size, base=base)
    except ValueError as e:
        raise VectorFileError("memory", str(e)) from None
    end = base + size
    if end > 1 << vm.pa_bits:
        raise VectorFileError("memory", f"[{base:#x}, {end:#x}) extends beyond the "
                              f"{vm.pa_bits}-bit physical-address width (vm.pa_bits)")
    words = mem_json.get("words", {})
    if not isinstance(words, dict):
        raise VectorFileError("memory.words", f"expected an object of address: word, got "
                              f"{_type_name(words)}")
    seen = {}
    for key, value in words.items():
        where = f"memory.words[{key}]"
        addr = _number(key, where)
        word = _number(value, where)
        if addr % 8:
            raise VectorFileError(where, "address is not 8-byte aligned")
        if not memory.contains(addr):
            raise VectorFileError(where, f"address is outside memory [{base:#x}, {end:#x})")
        if addr in seen:
            raise VectorFileError(where, f"the same address as memory.words[{seen[addr]}]")
        seen[addr] = key
        memory.write64(addr, word)
        memory.reserve(addr & ~(PAGE_SIZE - 1))
    bus_json = mem_json.get("bus_errors", [])
    if not isinstance(bus_json, list):
        raise VectorFileError("memory.bus_errors", f"expected a list of addresses, got "
                              f"{_type_name(bus_json)}")
    bus_errors = []
    for i, value in enumerate(bus_json):
        where = f"memory.bus_errors[{i}]"
        addr = _number(value, where)
        if addr % 8:
            raise VectorFileError(where, f"{addr:#x} is not 8-byte aligned")
        if not memory.contains(addr):
            raise VectorFileError(where, f"{addr:#x} is outside memory [{base:#x}, {end:#x})")
        if addr in bus_errors:
            raise VectorFileError(where, f"{addr:#x} is listed twice")
        bus_errors.append(addr)

    root = _number(_require(data, "root", "vector file"), "root")
    try:
        fmt.check_root(root, vm)
    except FormatError as e:
        raise VectorFileError("root", str(e)) from None
    if not memory.contains(root, fmt.root_table_bytes):
        raise VectorFileError("root", f"the {fmt.root_table_bytes}-byte table at {root:#x} "
                              f"lies outside memory [{base:#x}, {end:#x})")
    memory.reserve(root, fmt.root_table_bytes)
    for addr in bus_errors:
        memory.poison(addr)

    accesses_json = _require(data, "accesses", "vector file")
    if not isinstance(accesses_json, list):
        raise VectorFileError("accesses", f"expected a list, got {_type_name(accesses_json)}")
    accesses = []
    for i, item in enumerate(accesses_json):
        where = f"accesses[{i}]"
        item = _object(item, where, _ACCESS_FIELDS)
        gpa = _number(_require(item, "gpa", where), f"{where}.gpa")
        access = _require(item, "access", where)
        if access not in ACCESSES:
            raise VectorFileError(f"{where}.access", f"expected one of "
                                  f"{', '.join(ACCESSES)}, got {json.dumps(access)}")
        accesses.append((gpa, access))
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise VectorFileError("seed", f"expected an integer or null, got {_type_name(seed)}")
    return VectorFile(fmt=fmt, vm=vm, root=root, memory=memory, accesses=accesses,
                      seed=seed, bus_errors=bus_errors)


def save_vectors(vectors, path):
    """Write ``vectors`` as a vector file that :func:`load_vectors` reads back equal."""
    text = json.dumps(vectors.to_json(), indent=1) + "\n"
    with open(path, "w") as f:
        f.write(text)


def run_vectors(vectors):
    """Run every access in order on the model; A/D updates change the memory as they go."""
    return [translate(vectors.memory, vectors.fmt, vectors.root, gpa, access, vm=vectors.vm)
            for gpa, access in vectors.accesses]


def result_lines(results):
    """The JSON lines both runners print: one object per access with its index."""
    for index, result in enumerate(results):
        yield json.dumps({"index": index, **result.to_json()})


def write_results(results, path=None):
    """Write :func:`result_lines` to ``path``, or to standard output."""
    lines = result_lines(results)
    if path:
        with open(path, "w") as out:
            out.writelines(line + "\n" for line in lines)
    else:
        for line in lines:
            print(line)


# -- random vector files ------------------------------------------------------------------


class _TableBuilder:
    """Builds random tables in a HostMemory, remembering every mapping it makes."""

    def __init__(self, fmt, vm, memory, rng):
        self.fmt, self.vm, self.memory, self.rng = fmt, vm, memory, rng
        self.root = memory.alloc_table(fmt.root_table_bytes)
        self.mappings = []          # (gpa of the page, level)

    def walk_to(self, gpa, level):
        """Make tables down to ``level`` for ``gpa``; the entry address, or None when a
        leaf or a foreign entry is in the way."""
        fmt, mem = self.fmt, self.memory
        table = self.root
        for lvl in range(fmt.root_level, level, -1):
            addr = fmt.entry_addr(table, gpa, lvl)
            word = mem.read64(addr)
            if word == 0:
                if mem.free_pages < 1:
                    return None
                child = mem.alloc_table()
                mem.write64(addr, fmt.make_table(child))
                table = child
                continue
            entry = fmt.decode(word, lvl)
            if entry.leaf or fmt.entry_fault(word, lvl, self.vm):
                return None
            table = entry.frame
        addr = fmt.entry_addr(table, gpa, level)
        return addr if mem.read64(addr) == 0 else None

    def map_random(self, gpa):
        fmt, rng = self.fmt, self.rng
        levels = sorted(fmt.leaf_levels)
        weights = [8 if lvl == 1 else 3 if lvl == 2 else 1 for lvl in levels]
        level = rng.choices(levels, weights)[0]
        gpa &= ~(fmt.page_size(level) - 1)
        addr = self.walk_to(gpa, level)
        if addr is None:
            return
        hpa = rng.randrange(0, 1 << min(self.vm.pa_bits, 48)) & ~(fmt.page_size(level) - 1)
        perms = {k: rng.random() < 0.8 for k in "rwx"}
        if fmt.arch == "npt":
            perms["r"] = True
        if fmt.arch == "ept" and not self.vm.exec_only and perms["x"]:
            perms["r"] = True
        if perms["w"] and not perms["r"]:
            perms["r"] = True
        memtype = (rng.choice((0, 1, 4, 5, 6, 6, 6)) if fmt.arch == "ept"
                   else rng.randrange(8) if fmt.arch == "npt" else None)
        word = fmt.make_leaf(hpa, level, memtype=memtype, a=rng.random() < 0.5,
                             d=rng.random() < 0.3, **perms)
        self.memory.write64(addr, word)
        self.mappings.append((gpa, level))

    def path(self, gpa):
        """``[(level, entry address, word)]`` along the walk of ``gpa`` while entries
        are well-formed tables."""
        fmt, mem = self.fmt, self.memory
        table, out = self.root, []
        for level in range(fmt.root_level, 0, -1):
            addr = fmt.entry_addr(table, gpa, level)
            if not mem.contains(addr):
                break
            word = mem.read64(addr)
            out.append((level, addr, word))
            entry = fmt.decode(word, level)
            if fmt.entry_fault(word, level, self.vm) or entry.leaf or not mem.contains(entry.frame):
                break
            table = entry.frame
        return out

    def corrupt(self, gpa, bus_errors):
        """Damage one entry on the walk of ``gpa`` in a way chosen at random."""
        fmt, vm, mem, rng = self.fmt, self.vm, self.memory, self.rng
        path = self.path(gpa)
        if not path:
            return
        # The leaf end of the walk: an upper entry is shared by many mappings, and
        # damaging the root would fault a whole window of the address space.
        depth = len(path) - (1 if rng.random() < 0.75 else 2)
        if depth < 1 and len(path) > 1:
            return
        level, addr, word = path[max(depth, 0)]
        if level >= 3 and rng.random() < 0.8:
            return                  # it covers a whole window: keep most of them intact
        entry = fmt.decode(word, level)
        how = 5 if entry.leaf and level > 1 and rng.random() < 0.3 else rng.randrange(6)
        if how == 0:        # flip low control bits and high bits: every encoding rule
            for _ in range(rng.randint(1, 2)):
                word ^= 1 << rng.choice(list(range(12)) + list(range(52, 64)))
        elif how == 1:      # a reserved bit of this kind of entry
            mask = fmt.reserved_mask(level, entry.leaf, vm)
            if not mask:
                return
            word |= 1 << rng.choice([b for b in range(64) if mask >> b & 1])
        elif how == 2:      # an arbitrary word
            word = rng.getrandbits(64)
        elif how == 3 and not entry.leaf and level > 1:   # a table beyond memory
            limit = 1 << vm.pa_bits
            outside = rng.randrange(mem.base + mem.capacity, limit) & ~(PAGE_SIZE - 1)
            word = fmt.put_frame(word, outside)
        elif how == 4:      # the word answers with a bus error
            if addr not in bus_errors:
                bus_errors.append(addr)
            return
        elif how == 5 and entry.leaf and level > 1:      # a misaligned superpage frame
            word = fmt.put_frame(word, (entry.frame | PAGE_SIZE * rng.randrange(1, 512))
                                 & ((1 << vm.pa_bits) - 1))
        else:               # clear the entry: not present
            word = 0
        mem.write64(addr, word)


def random_vectors(format_name, seed, count, *, ad=None, pa_bits=None, memory_size=None,
                   memory_base=0):
    """A random vector file: tables with huge pages, holes and damaged entries of every
    fault kind, and ``count`` accesses that mostly hit mapped or damaged regions. The
    tables live in ``memory_size`` bytes from host-physical ``memory_base`` (the root
    table is the first page)."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    fmt = get_format(format_name)
    rng = random.Random(seed)
    if pa_bits is None:
        lo, hi = fmt.pa_bits_range
        pa_bits = rng.choice(sorted({lo, fmt.default_pa_bits, hi}))
    vm = fmt.vm_options(ad=ad, pa_bits=pa_bits, exec_only=rng.random() < 0.8,
                        nxe=rng.random() < 0.8)
    memory = HostMemory(memory_size or _DEFAULT_MEMORY, base=memory_base)
    builder = _TableBuilder(fmt, vm, memory, rng)

    # GPAs cluster in a few windows so that walks share upper levels, as real VMs do.
    windows = [rng.randrange(0, 1 << fmt.gpa_bits) & ~((1 << 30) - 1) for _ in range(8)]

    def random_gpa():
        return rng.choice(windows) + rng.randrange(0, 1 << 30)

    for _ in range(max(8, count // 4)):
        if memory.free_pages < 8:
            break
        builder.map_random(random_gpa())
    mapped = [g for g, _ in builder.mappings]
    bus_errors = []
    damaged = []
    for _ in range(max(2, count // 20)):
        if not mapped:
            break
        gpa = rng.choice(mapped)
        builder.corrupt(gpa, bus_errors)
        damaged.append(gpa)
    for addr in bus_errors:
        memory.poison(addr)

    accesses = []
    page_of = dict(builder.mappings)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.7 and mapped:
            gpa = rng.choice(mapped)
            gpa += rng.randrange(0, fmt.page_size(page_of[gpa]))
        elif roll < 0.85 and damaged:
            gpa = rng.choice(damaged) + rng.randrange(0, PAGE_SIZE)
        elif roll < 0.97:
            gpa = random_gpa()
        else:
            gpa = rng.randrange(1 << fmt.gpa_bits, 1 << min(64, fmt.gpa_bits + 8))
        accesses.append((gpa, rng.choice(ACCESSES)))
    return VectorFile(fmt=fmt, vm=vm, root=builder.root, memory=memory, accesses=accesses,
                      seed=seed, bus_errors=bus_errors)
