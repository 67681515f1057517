"""Generations: a small id per VM and space that the TLB and walk cache tag entries with.

Retiring every cached translation of a VM (a VM invalidation, a context write) is one
increment here instead of a sweep of the TLB's RAM: entries of an older generation no
longer match. When a counter wraps back to 0, entries from 2**GEN_BITS retirements ago
could match again, so the MMU sweeps that VM's space before a request uses it
(``wrapped``).
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .context import vm_index

__all__ = ["Generations", "GEN_BITS"]

#: Generation id width: a VM is swept once every 2**GEN_BITS retirements.
GEN_BITS = 4


class Generations(wiring.Component):
    """``num_vms`` x 2 generation counters; counter ``2*vm + private``.

    Members
    -------
    vm : In; gen_shared, gen_private : Out(GEN_BITS)
        The current generations of a VM's two spaces (combinational).
    current : Out(data.ArrayLayout(GEN_BITS, 2 * num_vms))
        Every counter, for a cache that checks its entries against their own VM's
        generation rather than a lookup's.
    retire : In(2 * num_vms)
        Counters to advance this cycle.
    wrapped : Out(2 * num_vms)
        The counters this cycle's ``retire`` takes back to 0.
    """

    def __init__(self, num_vms):
        self.num_vms = num_vms
        vm_bits = max(1, (num_vms - 1).bit_length())
        super().__init__({
            "vm": In(vm_bits), "gen_shared": Out(GEN_BITS), "gen_private": Out(GEN_BITS),
            "retire": In(2 * num_vms), "wrapped": Out(2 * num_vms),
            "current": Out(data.ArrayLayout(GEN_BITS, 2 * num_vms)),
        })

    def elaborate(self, platform):
        m = Module()
        gens = [Signal(GEN_BITS, name=f"vm{i // 2}_{'private' if i & 1 else 'shared'}")
                for i in range(2 * self.num_vms)]
        for vm in range(self.num_vms):
            with m.If(vm_index(self.vm, self.num_vms) == vm):
                m.d.comb += [self.gen_shared.eq(gens[2 * vm]),
                             self.gen_private.eq(gens[2 * vm + 1])]
        m.d.comb += [self.wrapped.eq(self.retire & Cat(g.all() for g in gens)),
                     self.current.eq(Cat(gens))]
        for i, g in enumerate(gens):
            with m.If(self.retire[i]):
                m.d.sync += g.eq(g + 1)
        return m
