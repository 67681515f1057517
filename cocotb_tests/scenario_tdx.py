"""A TDX-style confidential VM (TD) on the RTL: private memory through the external
root, shared memory through the shared root, conversions between them, eager
splitting of 2 MiB private pages under traffic, and teardown.

The hypervisor loop is the ordinary one (access -> RTL -> fault -> model -> retry) plus
userspace's part of a TD: a fault on a GPA whose private-ness disagrees with the GFN's
memory attribute returns ``MEMORY_FAULT`` (KVM_EXIT_MEMORY_FAULT), and the guest's
"userspace" converts the page (KVM_SET_MEMORY_ATTRIBUTES, as QEMU does for an implicit
conversion) and retries. Besides the scoreboard (reference walker on the root the
shared bit selects), every translation is checked against the side it must come
from: a private GPA maps the memslot's private (guest_memfd) frame, a shared GPA its
shared frame, and once a conversion's flush is done no request accepted later
translates through the side the GFN left.

Imports only :mod:`cocotb_tests.mmu_tb`, so that ``scenarios.py`` can register it on
its last line without an import cycle.
"""

import collections
import random

import cocotb
from cocotb.triggers import Timer

from sw_model.formats import get_format
from sw_model.tdp import Vm

from .mmu_tb import PERIOD_NS, checked_flush_sink, hypervisor_access, run_vcpus

__all__ = ["tdx", "TdGuest"]

#: The layout of the other scenarios: slot 0 is 8 MiB at GFN 0 (2 MiB capable, starts
#: private), slot 1 is 1 MiB at 1 GiB (made shared at boot: bounce buffers).
SLOT0_PAGES, SLOT1_BASE, SLOT1_PAGES = 2048, 1 << 18, 256
#: Offset of a slot's private (guest_memfd) frames from its shared frames.
PRIVATE_OFFSET = 1 << 40


class TdGuest:
    """A TD: its model (a :class:`sw_model.tdp.Vm` with ``tdx=True`` on the shared
    memory, flushing into the RTL), its memslots with private and shared frames, and
    the hypervisor loop with userspace's conversions.

    Members
    -------
    vm : sw_model.tdp.Vm
    index : int
        Context-table index in the RTL.
    shared : int
        The shared bit as a GPA mask.
    stats : dict
        ``faults``, results by :class:`PfResult`, ``translations``, ``conversions``
        (explicit), ``implicit_conversions`` (after a MEMORY_FAULT) and
        ``followed_conversions`` (a MEMORY_FAULT of an access that raced a conversion:
        retried on the new side).
    checks : collections.Counter
        Translations checked against their side: ``private``, ``shared``, and
        ``after a conversion`` (accepted after a conversion of their GFN completed).
    levels : dict
        Translations per page level; ``huge_private`` counts private 2 MiB ones.
    """

    def __init__(self, tb, index, fmt_name, rng, ad=None):
        fmt = get_format(fmt_name)
        if ad not in fmt.ad_modes:
            ad = fmt.ad_modes[rng.randrange(len(fmt.ad_modes))]
        self.tb, self.index, self.rng = tb, index, rng
        self.vm = Vm(fmt_name, tb.memory, ad=ad, flush_sink=checked_flush_sink(tb, index),
                     trace=False, tdx=True)
        self.shared = 1 << self.vm.tdx.shared_bit
        hpa0 = (1 << 32) + (index << 30)
        # slot -> (base gfn, npages, first shared frame); private frames are PRIVATE_OFFSET up
        self.slots = {0: (0, SLOT0_PAGES, hpa0), 1: (SLOT1_BASE, SLOT1_PAGES, hpa0 + (512 << 20))}
        for slot_id, (base, npages, hpa) in self.slots.items():
            self.vm.add_memslot(slot_id, base, npages, hpa, private_hpa=hpa + PRIVATE_OFFSET)
        self.stats = {"faults": 0, "emulated": 0, "translations": 0, "conversions": 0,
                      "implicit_conversions": 0, "followed_conversions": 0}
        self.checks = collections.Counter()
        self.levels = {}
        self.huge_private = 0
        # [start gfn, end gfn, cycle begun, cycle done (None while its flush runs),
        # private], in the order the model made them.
        self.conversions = []
        tb.add_guest(index, self)

    @property
    def name(self):
        return f"vm{self.index}:{self.vm.fmt.name}/td/{self.vm.opts.ad}"

    def gpa(self, gfn, offset=0):
        """The GPA the guest uses for ``gfn`` now: the shared bit set iff it is shared."""
        return gfn << 12 | offset | (0 if self.vm.is_private_gfn(gfn) else self.shared)

    async def convert(self, gfn, npages, private):
        """KVM_SET_MEMORY_ATTRIBUTES: zap the side the range leaves, flush it; later
        faults map the other side."""
        entry = [gfn, gfn + npages, self.tb.cycle(), None, private]
        self.conversions.append(entry)     # model_step changes the attributes at once
        await self.tb.model_step(self.vm.set_memory_attributes, gfn, npages, private)
        entry[3] = self.tb.cycle()

    async def access(self, gpa, access):
        """One guest access on the hypervisor loop; the final response."""
        return await hypervisor_access(self, gpa, access, on_memory_fault=self._implicit)

    async def _implicit(self, gpa, started):
        """KVM_EXIT_MEMORY_FAULT: userspace converts the page to the side the guest used,
        unless the guest converted it while this access was under way: the vCPU then
        follows the guest's own view and retries on the new side (without that, two
        vCPUs using the page on either side would convert it back and forth forever)."""
        gfn = (gpa & ~self.shared) >> 12
        if any(start <= gfn < end and begun >= started
               for start, end, begun, _, _ in self.conversions):
            self.stats["followed_conversions"] += 1
            return self.gpa(gfn, gpa & 0xfff)
        self.stats["implicit_conversions"] += 1
        await self.convert(gfn, 1, not gpa & self.shared)
        return None

    def translated(self, req):
        """A successful translation (from :func:`~cocotb_tests.mmu_tb.hypervisor_access`):
        count it and check it went through the side (private or shared) of its GPA."""
        self.stats["translations"] += 1
        private = not req.gpa & self.shared
        gfn = (req.gpa & ~self.shared) >> 12
        slot = self.vm.find_memslot(gfn)
        assert slot is not None, f"{self.name}: {req.gpa:#x} translated outside the memslots"
        base, _, hpa = self.slots[slot.slot_id]
        want = hpa + (PRIVATE_OFFSET if private else 0) + ((gfn - base) << 12) \
            + (req.gpa & 0xfff)
        side = "private" if private else "shared"
        assert req.result.hpa == want, (
            f"{self.name}: {side} {req.access} {req.gpa:#x} (cycles {req.accepted}.."
            f"{req.answered}) -> {req.result.hpa:#x}, the {side} frame is {want:#x}")
        self.checks[side] += 1
        for start, end, _, cycle, to_private in reversed(self.conversions):
            if start <= gfn < end:
                # Accepted after the latest conversion of the GFN finished its flush.
                if cycle is not None and req.accepted > cycle:
                    assert to_private == private, (
                        f"{self.name}: {side} {req.access} {req.gpa:#x} accepted at cycle "
                        f"{req.accepted} translated to {req.result.hpa:#x}, but gfn {gfn:#x} "
                        f"became {'private' if to_private else 'shared'} at cycle {cycle}")
                    self.checks["after a conversion"] += 1
                break
        self.levels[req.result.level] = self.levels.get(req.result.level, 0) + 1
        if private and req.result.level > 1:
            self.huge_private += 1

    async def run(self, pattern, count, *, vcpus=4, stop=None):
        """``vcpus`` concurrent streams of accesses from ``pattern(rng)`` until ``count``
        are done (or ``stop()`` is true)."""
        await run_vcpus(self.access, self.rng, pattern, count, vcpus=vcpus, stop=stop)


def _sequential(guest, base_gfn, npages, stride):
    counter = [0]

    def pattern(rng):
        page = (counter[0] * stride) % npages
        counter[0] += 1
        return guest.gpa(base_gfn + page, rng.randrange(512) << 3), \
            "write" if rng.random() < 0.3 else "read"
    return pattern


def _mixed(guest, seed, hot=48, p_hot=0.85, p_slot1=0.3):
    """Locality over slot 0 and slot 1, each GPA in the form its attribute asks for."""
    pick = random.Random(seed)
    hot0 = pick.sample(range(SLOT0_PAGES), hot)
    hot1 = pick.sample(range(SLOT1_PAGES), hot // 3)

    def pattern(rng):
        if rng.random() < p_slot1:
            page = SLOT1_BASE + (rng.choice(hot1) if rng.random() < p_hot
                                 else rng.randrange(SLOT1_PAGES))
        else:
            page = rng.choice(hot0) if rng.random() < p_hot else rng.randrange(SLOT0_PAGES)
        r = rng.random()
        return guest.gpa(page, rng.randrange(512) << 3), \
            "write" if r < 0.25 else "execute" if r < 0.28 else "read"
    return pattern


async def _answers(tb, count):
    target = tb.answered + count
    while tb.answered < target:
        await Timer(20 * PERIOD_NS, "ns")


async def tdx(tb, env):
    """A TD's life: shared bounce buffers, private boot with 2 MiB private pages,
    traffic with conversions both ways and eager splitting, a guest touching a page
    in the wrong form (userspace converts), teardown with no page left behind."""
    rng = random.Random(env.seed)
    first = env.formats[0]
    name = first if get_format(first).arch == "ept" else ("ept4", "ept5")[env.seed % 2]
    free_before = tb.memory.free_pages
    guest = TdGuest(tb, 0, name, rng, env.ad)
    vm = guest.vm
    s = env.scale

    await guest.convert(SLOT1_BASE, SLOT1_PAGES, private=False)
    guest.stats["conversions"] += 1
    await guest.run(_sequential(guest, 0, SLOT0_PAGES, 97), 48 * s, vcpus=env.vcpus)
    await guest.run(_sequential(guest, SLOT1_BASE, SLOT1_PAGES, 5), 24 * s, vcpus=env.vcpus)
    assert guest.checks["private"] > 0 and guest.checks["shared"] > 0

    done = [False]
    flow = cocotb.start_soon(guest.run(_mixed(guest, env.seed), 10 ** 9, vcpus=env.vcpus,
                                       stop=lambda: done[0]))
    for _ in range(2 * s):
        await _answers(tb, 40)
        start = rng.randrange(SLOT0_PAGES - 64)             # private -> shared
        await guest.convert(start, 64, private=False)
        await _answers(tb, 40)
        start1 = SLOT1_BASE + rng.randrange(SLOT1_PAGES - 32)  # shared -> private
        await guest.convert(start1, 32, private=True)
        await _answers(tb, 40)
        await guest.convert(start, 64, private=True)
        await guest.convert(start1, 32, private=False)
        guest.stats["conversions"] += 4
    # Eager splitting of the 2 MiB private pages (the external table's split call)
    # while the vCPUs keep running.
    await _answers(tb, 30)
    external = vm.tdx.external
    huge = sum(1 for _, level in external.leaves() if level > 1)
    splits_before = external.calls["split"]
    await tb.model_step(vm.split_huge_pages, 0)
    splits = external.calls["split"] - splits_before
    assert splits == huge, f"{guest.name}: {huge} private 2 MiB pages, {splits} split calls"
    assert not any(level > 1 for _, level in external.leaves())
    await _answers(tb, 60 * s)
    done[0] = True
    await flow
    await tb.quiesce()

    # A guest touching pages in the wrong form: userspace converts each.
    implicit = guest.stats["implicit_conversions"]
    for gfn in rng.sample(range(SLOT0_PAGES), 4) + [SLOT1_BASE + 3]:
        gpa = guest.gpa(gfn, 0x40) ^ guest.shared
        req = await guest.access(gpa, "read")
        assert req.result.ok, f"{guest.name}: {gpa:#x} after its conversion: " \
                              f"{req.result.to_json()}"
    assert guest.stats["implicit_conversions"] >= implicit + 5

    calls = dict(vm.tdx.external.calls)
    await tb.model_step(vm.zap_all)
    await tb.quiesce()
    leaked = free_before - tb.memory.free_pages
    assert leaked == 0, f"{guest.name}: {leaked} pages not returned after teardown"
    teardown = {k: v - calls.get(k, 0) for k, v in vm.tdx.external.calls.items()
                if v != calls.get(k, 0)}
    checks = dict(guest.checks)
    checks.update({"private 2M translations": guest.huge_private,
                   "conversions": guest.stats["conversions"],
                   "implicit conversions": guest.stats["implicit_conversions"],
                   "accesses that followed a conversion": guest.stats["followed_conversions"],
                   "2M private pages split": splits})
    return {"guests": [guest], "details": {
        "TDX module calls": dict(vm.tdx.external.calls),
        "TDX module calls at teardown": teardown,
        "TD checks": checks}}
