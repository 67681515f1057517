"""Directed tests of the RTL walker: every fault kind of every format at every level,
bus errors at every level (PTE reads and A/D updates), A/D compares that fail because
software changed the PTE in the middle of a walk, and several VMs of different formats
sharing the walker.

Each case gets its own root entry (its own region of the guest-physical space), so all
cases of a format run in one simulation; each answer is compared with the reference
walker and the test then checks that the intended faults were actually produced.
"""

import random

import numpy as np
import pytest

from sw_model.formats import ACCESSES, FORMAT_NAMES, get_format
from sw_model.memory import HostMemory
from sw_model.walker import translate

from hw.sim import VmContext, check_against_model, run_walker

# VM option sets per architecture: A/D modes, physical-address widths, capabilities.
VARIANTS = {
    "ept": [dict(ad="hardware", pa_bits=46, exec_only=True),
            dict(ad="off", pa_bits=36, exec_only=False),
            dict(ad="hardware", pa_bits=52, exec_only=True)],
    "npt": [dict(ad="hardware", pa_bits=46, nxe=True),
            dict(ad="hardware", pa_bits=36, nxe=False),
            dict(ad="hardware", pa_bits=52, nxe=True)],
    "gstage": [dict(ad="hardware"), dict(ad="fault")],
}


class CaseBuilder:
    """Builds one small walk per case, each under its own root entry."""

    def __init__(self, fmt, vm, memory, rng):
        self.fmt, self.vm, self.mem, self.rng = fmt, vm, memory, rng
        self.root = memory.alloc_table(fmt.root_table_bytes)
        self.regions = 0
        self.accesses = []

    def fresh(self, leaf_level, **leaf):
        """Map a page at ``leaf_level`` in a new region: ``(gpa, {level: entry addr})``."""
        fmt, mem = self.fmt, self.mem
        self.regions += 1
        assert self.regions < fmt.table_entries(fmt.levels), "too many cases for one root"
        gpa = self.regions << fmt.page_shift(fmt.levels)
        gpa |= self.rng.randrange(fmt.page_size(leaf_level)) & ~7
        table, path = self.root, {}
        for level in range(fmt.levels, leaf_level, -1):
            addr = fmt.entry_addr(table, gpa, level)
            table = mem.alloc_table()
            mem.write64(addr, fmt.make_table(table))
            path[level] = addr
        addr = fmt.entry_addr(table, gpa, leaf_level)
        limit = 1 << min(self.vm.pa_bits, 48)
        hpa = self.rng.randrange(limit) & ~(fmt.page_size(leaf_level) - 1)
        mem.write64(addr, fmt.make_leaf(hpa, leaf_level, **leaf))
        path[leaf_level] = addr
        return gpa, path

    def add(self, gpa, accesses=ACCESSES):
        self.accesses.extend((gpa, access) for access in accesses)

    def edit(self, addr, change):
        self.mem.write64(addr, change(self.mem.read64(addr)) & ((1 << 64) - 1))


def _mask(fmt, *names):
    return sum(fmt.fields[name].mask for name in names)


def build_cases(fmt, vm, memory, rng):
    """Every fault kind the format can produce, at every level where it can happen."""
    b = CaseBuilder(fmt, vm, memory, rng)
    f = fmt.fields
    for leaf_level in sorted(fmt.leaf_levels):
        gpa, _ = b.fresh(leaf_level)
        b.add(gpa)                                          # a good walk
        for level in range(fmt.levels, leaf_level - 1, -1):
            is_leaf = level == leaf_level
            gpa, path = b.fresh(leaf_level)                 # not present
            b.edit(path[level], lambda w: 0)
            b.add(gpa)
            gpa, path = b.fresh(leaf_level)                 # bus error
            memory.poison(path[level])
            b.add(gpa, ("read",))
            mask = fmt.reserved_mask(level, is_leaf, vm)    # reserved bits
            bits = [i for i in range(64) if mask >> i & 1]
            chosen = {bits[0], bits[-1], *rng.sample(bits, min(3, len(bits)))} if bits else set()
            if vm.pa_bits < 52 and fmt.arch != "gstage":
                chosen.add(vm.pa_bits)
            for bit in sorted(chosen):
                gpa, path = b.fresh(leaf_level)
                b.edit(path[level], lambda w, bit=bit: w | 1 << bit)
                b.add(gpa, (rng.choice(ACCESSES),))
            if fmt.arch == "ept":
                rwx = _mask(fmt, "r", "w", "x")
                for perms in (0b001, 0b011, 0b101, 0b100, 0b010, 0b110):
                    gpa, path = b.fresh(leaf_level)
                    b.edit(path[level], lambda w, p=perms: (w & ~rwx) | p)
                    b.add(gpa)
            elif fmt.arch == "npt":
                for clear, setting in (("rw", 0), ("us", 0), (None, f["nx"].mask)):
                    gpa, path = b.fresh(leaf_level)
                    clear_mask = f[clear].mask if clear else 0
                    b.edit(path[level], lambda w, c=clear_mask, s=setting: (w & ~c) | s)
                    b.add(gpa)
            else:
                rwx = _mask(fmt, "r", "w", "x")
                encodings = ((f["w"].mask, f["w"].mask | f["x"].mask) if not is_leaf else
                             (f["r"].mask, f["r"].mask | f["w"].mask, f["r"].mask | f["x"].mask,
                              f["x"].mask, f["w"].mask, f["w"].mask | f["x"].mask))
                for enc in encodings:
                    gpa, path = b.fresh(leaf_level)
                    b.edit(path[level], lambda w, e=enc: (w & ~rwx) | e)
                    b.add(gpa)
        gpa, path = b.fresh(leaf_level)                     # ignored / software bits
        b.edit(path[leaf_level], lambda w: w | sum(fl.mask for fl in fmt.sw_fields.values()))
        b.add(gpa)
        if fmt.arch == "ept":
            for memtype in range(8):
                gpa, path = b.fresh(leaf_level)
                b.edit(path[leaf_level], lambda w, t=memtype: f["memtype"].put(w, t))
                b.add(gpa, ("read",))
        if fmt.arch == "npt":
            for memtype in range(8):
                gpa, _ = b.fresh(leaf_level, memtype=memtype)
                b.add(gpa, ("read",))
        if fmt.arch == "gstage":
            gpa, path = b.fresh(leaf_level)                 # U clear on the leaf
            b.edit(path[leaf_level], lambda w: w & ~f["u"].mask)
            b.add(gpa)
            for a, d in ((False, False), (True, False), (True, True)):
                gpa, _ = b.fresh(leaf_level, a=a, d=d)      # Svade / Svadu
                b.add(gpa)
            if leaf_level > 1:                              # misaligned superpage
                gpa, path = b.fresh(leaf_level)
                b.edit(path[leaf_level], lambda w: w | 1 << fmt.frame_field.lsb)
                b.add(gpa)
            if leaf_level == 1:                             # a pointer at level 1
                gpa, path = b.fresh(1)
                b.edit(path[1], lambda w: fmt.make_table(memory.alloc_table()))
                b.add(gpa, ("read",))
    for gpa in (1 << fmt.gpa_bits, (1 << 64) - 8):          # GPA beyond the input width
        b.add(gpa)
    return b


def _run_format(name, seed):
    fmt = get_format(name)
    rng = random.Random(seed)
    memory = HostMemory(64 << 20)
    contexts, accesses = [], []
    for variant in VARIANTS[fmt.arch]:
        vm = fmt.vm_options(**variant)
        b = build_cases(fmt, vm, memory, rng)
        accesses += [(gpa, access, len(contexts)) for gpa, access in b.accesses]
        contexts.append(VmContext(fmt, b.root, vm))
    rtl, model, mismatches, rtl_mem, model_mem = check_against_model(
        memory, contexts, accesses, latency=2)
    assert not mismatches, (f"{name} (seed {seed}): {len(mismatches)} mismatches; first "
                            f"access {mismatches[0][0]}\n model {mismatches[0][1]}\n "
                            f"rtl   {mismatches[0][2]}")
    assert np.array_equal(rtl_mem.words, model_mem.words)
    return fmt, model


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_fault_kind_at_every_level(name):
    fmt, model = _run_format(name, seed=FORMAT_NAMES.index(name))
    seen = {(r.kind, r.level) for r in model if not r.ok}
    want = {("gpa_range", fmt.levels)}
    for level in range(1, fmt.levels + 1):
        want |= {("not_present", level), ("reserved", level), ("bus_error", level)}
    for level in fmt.leaf_levels:
        want.add(("permission", level))
        if fmt.arch == "gstage":
            want.add(("ad_clear", level))
            if level > 1:
                want.add(("misaligned", level))
    assert want <= seen, f"{name}: never produced {sorted(want - seen)}"
    assert {r.level for r in model if r.ok} == set(fmt.leaf_levels)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_bus_error_on_ad_update(name):
    # The entry reads fine, then the AtomicCompare that sets its A bit is answered with
    # SLVERR: the walk ends in bus_error at that entry's level (no hang, no retry).
    fmt = get_format(name)
    vm = fmt.vm_options(ad="hardware")
    for leaf_level in sorted(fmt.leaf_levels):
        memory = HostMemory(4 << 20)
        b = CaseBuilder(fmt, vm, memory, random.Random(leaf_level))
        gpa, path = b.fresh(leaf_level)
        target = path[leaf_level]

        def poison(addr, mem, target=target):
            if addr == target:
                mem.poison(addr)

        model_memory = _poison_on_update(memory.copy(), target)
        [result] = run_walker(memory, [VmContext(fmt, b.root, vm)], [(gpa, "write")],
                              on_atomic=poison)
        fault = result.result
        assert not fault.ok and fault.kind == "bus_error", fault.to_json()
        assert (fault.level, fault.pte_addr) == (leaf_level, target)
        assert fault.report == (fmt.fault_report("bus_error", "write", gpa, [], vm))
        # The model reports the same fault and leaves memory as the RTL did.
        expect = translate(model_memory, fmt, b.root, gpa, "write", vm=vm)
        assert expect.to_json() == fault.to_json()
        assert (model_memory.words == memory.words).all()


def _poison_on_update(memory, target):
    """``memory`` with the word at ``target`` poisoned just before a compare-exchange on
    it: the model's view of an A/D update failing on the bus."""
    original = memory.cmpxchg64

    def cmpxchg64(addr, old, new):
        if addr == target:
            memory.poison(addr)
        return original(addr, old, new)

    memory.cmpxchg64 = cmpxchg64
    return memory


def _software_change_cases(fmt):
    """``(description, entry level, change, expected outcome)``: software rewrites an
    entry between the walk's read and its A/D AtomicCompare."""
    f = fmt.fields
    sw = fmt.sw_fields["host_writable"].mask
    cases = [("sets a software bit", "ok", lambda w: w | sw),
             ("zaps the entry", "not_present", lambda w: 0)]
    if fmt.arch == "gstage":
        cases.append(("write-protects the leaf", "permission", lambda w: w & ~f["w"].mask))
    elif fmt.arch == "ept":
        cases.append(("write-protects the leaf", "permission", lambda w: w & ~f["w"].mask))
    else:
        cases.append(("write-protects the leaf", "permission", lambda w: w & ~f["rw"].mask))
    return cases


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_ad_compare_fails_when_software_changes_the_pte(name):
    fmt = get_format(name)
    vm = fmt.vm_options(ad="hardware")
    leaf_level = min(fmt.leaf_levels)
    for what, outcome, change in _software_change_cases(fmt):
        # Change the leaf (the last A/D update) and, for x86, the root (the first).
        levels = {leaf_level, fmt.levels} if fmt.arch != "gstage" else {leaf_level}
        for level in sorted(levels):
            memory = HostMemory(4 << 20)
            b = CaseBuilder(fmt, vm, memory, random.Random(7))
            gpa, path = b.fresh(leaf_level)
            target = path[level]
            seen = {}

            def software(addr, mem, target=target, change=change):
                if addr == target and not seen:
                    mem.write64(addr, change(mem.read64(addr)))
                    seen["snapshot"] = mem.copy()

            [result] = run_walker(memory, [VmContext(fmt, b.root, vm)], [(gpa, "write")],
                                  on_atomic=software)
            assert seen, f"{name}: no A/D update reached the entry at level {level}"
            assert result.restarts == 1, f"{name} {what} at level {level}: no restart"
            # The restarted walk sees the memory as it was right after the change.
            expect = translate(seen["snapshot"], fmt, b.root, gpa, "write", vm=vm)
            assert result.result.to_json() == expect.to_json(), (what, level)
            got = result.result.kind if not result.result.ok else "ok"
            assert got == outcome, (name, what, level, got)
            # translate() applied its own A/D writes to the snapshot: same final memory.
            assert np.array_equal(memory.words, seen["snapshot"].words), (what, level)


def test_all_formats_share_the_walker():
    # Seven VMs of seven formats, accesses interleaved at random: the context table
    # selects the format, root and options per request.
    rng = random.Random(99)
    memory = HostMemory(96 << 20)
    contexts, accesses = [], []
    for name in FORMAT_NAMES:
        fmt = get_format(name)
        vm = fmt.vm_options(**VARIANTS[fmt.arch][0])
        b = build_cases(fmt, vm, memory, rng)
        accesses += [(gpa, access, len(contexts)) for gpa, access in b.accesses]
        contexts.append(VmContext(fmt, b.root, vm))
    rng.shuffle(accesses)
    rtl, model, mismatches, rtl_mem, model_mem = check_against_model(
        memory, contexts, accesses, latency=1, stall=0.2, seed=3)
    assert not mismatches, mismatches[:1]
    assert np.array_equal(rtl_mem.words, model_mem.words)
    assert len(contexts) == 7 and len({r.result.gpa for r in rtl}) > 100
