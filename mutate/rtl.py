"""Mutants of the RTL (hw/): one plausible hardware bug each, caught by fast simulator tests."""

RTL = [
    # -- architecture rules (hw/arch) --------------------------------------------------
    dict(name="ept-perm-leaf-only", area="rtl", path="hw/arch/ept.py",
         old='faults=[((acc[:3] & want) == 0, K["permission"])]',
         new='faults=[((ent[:3] & want) == 0, K["permission"])]',
         bug="EPT permission checked on the leaf only, not intersected over levels",
         tests=("tests/test_hw_directed.py::test_every_fault_kind_at_every_level[ept4]",)),
    dict(name="npt-table-w-ignored", area="rtl", path="hw/arch/npt.py",
         old="(want[1] & ~acc[1])",
         new="(want[1] & ~ent[1])",
         bug="NPT write allowed when a non-leaf entry has R/W clear",
         tests=("tests/test_hw_directed.py::test_every_fault_kind_at_every_level[npt4]",)),
    dict(name="gstage-misaligned-ignored", area="rtl", path="hw/arch/gstage.py",
         old='(misaligned, K["misaligned"]),',
         new='(Const(0, 1), K["misaligned"]),',
         bug="G-stage misaligned superpage translated instead of faulting",
         tests=("tests/test_hw_directed.py::test_every_fault_kind_at_every_level[sv39x4]",)),

    # -- walk engine and A/D unit --------------------------------------------------------
    dict(name="engine-range-fault-level", area="rtl", path="hw/engine.py",
         old="level.eq(start.params.levels), res.perms.eq(0)",
         new="level.eq(start.params.levels - 1), res.perms.eq(0)",
         bug="GPA-out-of-range fault reported one level below the root",
         tests=("tests/test_hw_directed.py::test_every_fault_kind_at_every_level[ept4]",)),
    dict(name="ad-dirty-on-read", area="rtl", path="hw/ad.py",
         old="Mux((sel == leaf) & write, d_mask, 0)",
         new="Mux(sel == leaf, d_mask, 0)",
         bug="A/D update sets D in the leaf on a read",
         tests=("tests/test_hw_walker.py::test_random_vectors[ept4-hardware]",)),

    # -- TLB and walk cache --------------------------------------------------------------
    dict(name="tlb-key-without-vm", area="rtl", path="hw/tlb.py",
         old="match = Cat(s1_vbits[w] & (t.vm == key.vm) & (t.gen == late.gen)",
         new="match = Cat(s1_vbits[w] & (t.gen == late.gen)",
         bug="4 KiB TLB tag compare misses the VM id",
         tests=("tests/test_tlb_rtl.py::test_isolation_and_allow",)),
    dict(name="tlb-range-misses-huge-overlap", area="rtl", path="hw/tlb.py",
         old="overlap = in_range(sw.range, base, base | mask)",
         new="overlap = in_range(sw.range, base, base)",
         bug="range invalidation keeps a huge entry that starts before the range",
         tests=("tests/test_tlb_rtl.py::test_range_overlap_partial[2]",)),
    dict(name="pwc-range-last-excluded", area="rtl", path="hw/pwc.py",
         old="in_range(sw.range, Cat(Const(0, shift), base),",
         new="in_range(sw.range, Cat(Const(0, shift), base + 1),",
         bug="walk-cache range invalidation off by one: the last region survives",
         tests=("tests/test_pwc_rtl.py::test_deepest_level_wins_and_range_is_exact",)),

    # -- invalidation, miss table, arbiter, context ----------------------------------------
    dict(name="inval-walks-not-stale", area="rtl", path="hw/inval.py",
         old="m.d.comb += [port.ready.eq(1), self.stale.eq(1)]",
         new="m.d.comb += port.ready.eq(1)",
         bug="a walk begun before an invalidation still fills the TLB after it",
         tests=("tests/test_mmu_top.py::test_invalidation_at_every_offset_of_a_walk[ept4-range]",)),
    dict(name="misses-joined-offset", area="rtl", path="hw/misses.py",
         old="p.result.hpa.eq(Cat(own_offset | req.gpa[:12], result.hpa[12:]))",
         new="p.result.hpa.eq(result.hpa)",
         bug="a request that joined a walk gets the walk's page offset, not its own",
         tests=("tests/test_mmu_top.py::test_merged_misses_and_out_of_order",)),
    dict(name="arbiter-start-id-wins", area="rtl", path="hw/arbiter.py",
         old="self.grant.eq(Mux(asks, granted, self.start_id))",
         new="self.grant.eq(Mux(self.start_valid, self.start_id, granted))",
         bug="ARID names the starting walk while another walk's read is presented",
         tests=("tests/test_mmu_top.py::test_random_vectors[ept4]",)),
    dict(name="context-private-walks-shared-root", area="rtl", path="hw/context.py",
         old="root = Mux(is_private(ctx, gpa), ctx.ext_root, ctx.root)",
         new="root = ctx.root",
         bug="a TD's private GPA walks the shared root, not the external one",
         tests=("tests/test_tdx_rtl.py::test_walker_picks_the_root_by_shared_bit[ept4]",)),
    dict(name="misses-stale-walk-fills", area="rtl", path="hw/misses.py",
         old="self.wants_fill.eq(self.done & self.ok & ~stale & ~fill_taken)",
         new="self.wants_fill.eq(self.done & self.ok & ~fill_taken)",
         bug="a walk that began before an invalidation still fills the TLB after it",
         tests=("tests/test_mmu_top.py::test_invalidation_at_every_offset_of_a_walk[npt4-all]",)),

    # -- bugs around the walks that leave the answers right (or nearly), seen by the
    # co-simulation's traffic rules (cocotb_tests/mmu_tb.py, WalkTrafficChecker). Not
    # listed: a walk that re-reads a level its walk cache holds (pwc.py choosing the
    # highest hit) reads only entries its reference walk visits, which no traffic rule
    # can tell from a right walk (it costs reads; tests/test_pwc_rtl.py's model of the
    # walk cache catches it); an A/D compare of another walk's word fails and restarts
    # the walk again and again, a hang rather than a wrong transaction ----------------
    dict(name="pool-caches-table-before-a", area="rtl", path="hw/walkers.py",
         old="cached.valid.eq(pipe.rec_valid & pipe.rec_table & ~pipe.step.need)",
         new="cached.valid.eq(pipe.rec_valid & pipe.rec_table)",
         bug="the walk cache takes a table entry as it is read, before its A bit is set",
         tests=("tests/test_cocotb_faults.py::test_faults_short[verilator]",)),
    dict(name="engine-restart-keeps-owed", area="rtl", path="hw/engine.py",
         old="need.eq(0), top.eq(params.levels)]",
         new="top.eq(params.levels)]",
         bug="a walk restarted by a failed A/D compare redoes the updates it made before",
         tests=("tests/test_cocotb_faults.py::test_faults_short[verilator]",)),
    dict(name="mmu-join-any-access", area="rtl", path="hw/mmu.py",
         old="& (vpn_of(gpa) == vpn_of(other.req.gpa)) & (access == other.req.access))",
         new="& (vpn_of(gpa) == vpn_of(other.req.gpa)))",
         bug="a miss joins a walk of its page whatever the access (a write gets a read's walk)",
         tests=("tests/test_cocotb_mmu.py::test_scenarios_short[verilator]",)),
]
