"""The MMU bench: clock, reset, contexts, request driver, response monitor, invalidation
driver and AXI memory around ``hw.mmu.MMU`` (Verilog top ``tdpwalk_mmu``), plus the
scoreboard that checks every response against the reference walker, and each walk's
PTE reads and A/D updates against the reference walks.

One coroutine (:meth:`MmuTB._pump`) does everything that happens on the request side
each clock edge: it samples the response, the request and invalidation handshakes and
``inval_done`` at the edge, runs the scoreboard, and drives the next request, context
write or invalidation. It sleeps on an event while nothing is queued or outstanding, so
idle time costs no Python. The AXI memory (:class:`~cocotb_tests.axi_memory.HostMemoryAxi`)
serves the same :class:`~sw_model.memory.HostMemory` the model edits: zero copy.

Streams that need no model step between requests can instead run in batches
(:meth:`MmuTB.run_batch`) on the :class:`~cocotb_tests.batch_shell.BatchShell` build,
where Python touches the simulator once per batch rather than at every clock edge.
"""

import collections
import json
import logging
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event, RisingEdge
from cocotb.utils import get_sim_time

from hw.decode import ACCESS_IDS
from hw.sim import INVAL_SPACES, ResponseDecoder, VmContext
from hw.sim_axi import OKAY, PteRead
from hw.mmu import inval_layout
from hw.sv import WRAPPER, port_name
from hw.tlb import InvalKind, InvalSpace
from sw_model.tdp import FlushSink, PfResult
from sw_model.tdp.obligations import FlushObligations
from sw_model.walker import Translation, translate

from .axi_memory import HostMemoryAxi
from .batch_shell import STAMP_BITS

__all__ = ["MmuTB", "Response", "RtlFlushSink", "checked_flush_sink", "Scoreboard",
           "WalkTrafficChecker", "PERIOD_NS", "HIT_CYCLES",
           "run_vcpus", "record_result", "hypervisor_access"]

PERIOD_NS = 10
#: A response this many cycles after its request was accepted came from the TLB: the
#: MMU answers a hit the cycle after lookup (plus a cycle or two of response-port
#: arbitration); the shortest walk takes a lookup, a walker start and an AXI read.
HIT_CYCLES = 3


class Response:
    """One RTL answer, decoded into the model's shape.

    Members
    -------
    serial, tag, vm_index, gpa, access
        The request.
    accepted, answered : int
        Clock cycles of the request handshake and of the response.
    result : Translation or Fault
    root : int
        The root the RTL walks for this GPA (a TD's private GPA: the external root).
    private : bool
        A TD's private GPA.
    gfn : int
        The GPA's page number without a TD's shared bit (what invalidations name).
    raced : bool
        A model step ran while it was in flight, or while it was offered on the request
        port (the RTL may accept it before the invalidation the step asked for).
    beside_raced : bool
        A request in flight when it was accepted had raced a model step: it may be
        answered by that request's walk, which may have run before the step.
    """
    __slots__ = ("serial", "tag", "vm_index", "gpa", "access", "accepted", "answered",
                 "result", "done", "refs", "refs_generation", "root", "raced", "private",
                 "gfn", "paths", "ad_writes", "beside_raced")

    def __init__(self, serial, vm_index, gpa, access):
        self.serial, self.vm_index, self.gpa, self.access = serial, vm_index, gpa, access
        self.tag = self.accepted = self.answered = self.result = self.root = None
        self.private, self.gfn = False, gpa >> 12
        self.done = Event()
        self.refs = []          # reference results seen while in flight
        self.refs_generation = None     # the Scoreboard.generation of the last one
        self.raced = self.beside_raced = False
        self.paths = set()      # entry addresses the reference walks visited
        self.ad_writes = set()  # (address, old, new): the reference walks' A/D updates

    @property
    def latency(self):
        return self.answered - self.accepted

    @property
    def hit(self):
        return self.result.ok and self.latency <= HIT_CYCLES


class RtlFlushSink(FlushSink):
    """The model's flush API delivered to the MMU's ``inval`` port: ``flush_all`` is a
    VM invalidation, ``flush_range`` a RANGE one, each of the ``space`` asked for
    ("both", or a TD's "shared" / "private" translations; GFNs without the shared
    bit). The TB drives them after the model step that asked for them
    (:meth:`MmuTB.model_step`)."""
    supports_ranges = True

    def __init__(self, tb, vm_index):
        self.tb, self.vm_index = tb, vm_index

    @staticmethod
    def _space(space):
        if space not in INVAL_SPACES:
            raise ValueError(f"space must be one of {', '.join(INVAL_SPACES)}, got {space!r}")
        return INVAL_SPACES[space]

    def flush_all(self, *, space="both"):
        self.tb.queue_inval(InvalKind.VM, self.vm_index, 0, 0, self._space(space))

    def flush_range(self, gfn, npages, *, space="both"):
        self.tb.queue_inval(InvalKind.RANGE, self.vm_index, gfn, npages, self._space(space))


def checked_flush_sink(tb, vm_index):
    """The model's flush sink for VM ``vm_index``: the flushes go to the MMU
    (:class:`RtlFlushSink`) through a :class:`~sw_model.tdp.obligations.FlushObligations`
    checker, so a model step that leaves a cached translation unflushed against KVM's
    rules fails there, naming the operation, the GFN and the rule."""
    return FlushObligations(RtlFlushSink(tb, vm_index))


def _key(result):
    """What the RTL answers, comparable with the reference: a TLB hit has no PTE
    addresses or A/D writes."""
    if result.ok:
        return ("ok", result.hpa, result.level, frozenset(result.perms.items()),
                result.memtype)
    return ("fault", result.kind, result.level, result.pte_addr,
            tuple(sorted(result.report.items())))


def _request_json(req):
    return {"vm": req.vm_index, "gpa": hex(req.gpa), "access": req.access,
            "accepted": req.accepted, "answered": req.answered}


def _stale_kind(cached, now):
    """How a cached translation differs from the tables now."""
    if not now.ok:
        return f"now {now.kind}"
    if now.hpa != cached.hpa:
        return "remapped"
    if now.level != cached.level:
        return "split" if now.level < cached.level else "merged"
    if now.perms != cached.perms:
        grew = all(now.perms[k] or not v for k, v in cached.perms.items())
        return "permissions widened" if grew else "permissions reduced"
    return "memory type"


class Scoreboard:
    """Checks every RTL response against :func:`sw_model.walker.translate`.

    Memory changes only in model steps (the simulator is paused while the model runs)
    and by the RTL's own A/D updates (which do not change a translation), so the
    reference is taken when a request is accepted, after every model step while it is in
    flight (or offered on the request port), and when it is answered; each request keeps
    the entries its reference walks visit (``paths``) and the A/D updates they owe
    (``ad_writes``) for :class:`WalkTrafficChecker`. A response must equal one of them,
    except:

    * a cached translation (TLB hit) may be one the tables no longer hold, if it was
      held at some point and no invalidation covering it was accepted before the
      request: the model decided no flush was needed (eager split, aging). After an
      invalidation covering it, it is a mismatch (a stale hit);
    * a fault of a request during which the model changed the tables, decided by an
      entry that one of the request's reference walks visited, is accepted and counted
      as ``raced_faults``: a walk racing a zap follows the old path into a removed,
      frozen table. The hypervisor loop retries it, and the retry is checked. A fault
      at an entry no reference walk reached is a mismatch, raced or not.

    Members
    -------
    mismatches : list of dict
        Each with the ``rule`` broken and a ``reason`` naming where and when; those of
        :class:`WalkTrafficChecker` are recorded here too.
    checked, stale_hits, raced_faults : int
    stale_kinds : dict
        Stale hits by how the tables changed (:func:`_stale_kind`).
    """

    #: The rule an answer breaks when it is none of the above.
    WRONG_ANSWER = "answer equal to no reference walk"

    def __init__(self, tb):
        self.tb = tb
        self.mismatches = []
        self.checked = self.stale_hits = self.raced_faults = 0
        self.stale_kinds = {}
        # (vm_index, root, private) ->
        #     {(level, region_gfn): {translation: [first_seen, removed_at]}}
        self._seen = collections.defaultdict(dict)
        self._cache = {}
        self.generation = 0     # counts calls of changed()

    def changed(self):
        """The model changed the tables (a model step): forget cached references."""
        self._cache.clear()
        self.generation += 1

    def walk_now(self, req):
        """translate() of ``req`` on the memory as it is now, without A/D updates (which
        it reports in ``ad_writes``), uncached."""
        vm = self.tb.guests[req.vm_index].vm
        return translate(vm.mem, vm.fmt, req.root, req.gpa, req.access, vm=vm.opts,
                         ad_update=False)

    def _walk(self, req):
        """:meth:`walk_now`, a successful walk cached per (VM, root, 4 KiB page, access)
        until the next model step: only model steps change what a walk returns (the
        RTL's own A/D updates do not). A cached walk keeps the A/D updates it owed
        when it was taken."""
        key = (req.vm_index, req.root, req.gpa >> 12, req.access)
        walk = self._cache.get(key)
        if walk is None:
            walk = self.walk_now(req)
            if walk.ok:
                self._cache[key] = walk
        return walk

    def reference(self, req):
        """The answer ``req`` must have now: :meth:`_walk` at ``req``'s page offset,
        without A/D updates (an answer has none; :meth:`take` keeps the walk's)."""
        walk = self._walk(req)
        if not walk.ok:
            return walk
        return Translation(gpa=req.gpa, access=req.access,
                           hpa=walk.hpa - (walk.gpa & 0xfff) + (req.gpa & 0xfff),
                           level=walk.level, perms=walk.perms, memtype=walk.memtype,
                           pte_addrs=walk.pte_addrs, ad_writes=())

    def _base(self, req, result):
        """(vm, root, space), (level, region) and the translation of the region's first
        byte. Regions are in GFNs without a TD's shared bit, as invalidations are."""
        span = 1 << (9 * (result.level - 1))
        region = req.gfn & ~(span - 1)
        key = _key(result)
        base = result.hpa - ((req.gfn - region) << 12) - (req.gpa & 0xfff)
        return (req.vm_index, req.root, req.private), (result.level, region), \
            (base, *key[2:])

    def _note(self, req, result, cycle):
        if not result.ok:
            return
        where, region, base = self._base(req, result)
        records = self._seen[where].setdefault(region, {})
        record = records.get(base)
        if record is None or record[1] is not None:
            records[base] = [cycle, None]

    def take(self, req, cycle):
        """A reference for ``req`` now (accept, after a model step, answer). The tables
        change only where :meth:`changed` is called, so when they have not changed since
        ``req``'s last reference that one still holds, noted when it was taken."""
        if req.refs_generation == self.generation:
            return
        ref = self.reference(req)
        req.refs_generation = self.generation
        if not req.refs or _key(req.refs[-1]) != _key(ref):
            req.refs.append(ref)
        req.paths.update(ref.pte_addrs)
        if ref.ok:
            req.ad_writes.update(self._walk(req).ad_writes)
        self._note(req, ref, cycle)

    def invalidated(self, vm_index, start, count, cycle, space=InvalSpace.BOTH):
        """An invalidation was accepted at ``cycle``: what it covers is no longer legit."""
        for (vm, _root, private), table in self._seen.items():
            if vm_index is not None and vm != vm_index:
                continue
            if space != InvalSpace.BOTH and (space == InvalSpace.PRIVATE) != private:
                continue
            for (level, region), records in table.items():
                span = 1 << (9 * (level - 1))
                if start is None or (region < start + count and start < region + span):
                    for record in records.values():
                        if record[1] is None:
                            record[1] = cycle

    def _legit_cached(self, req, result):
        where, region, base = self._base(req, result)
        record = self._seen[where].get(region, {}).get(base)
        return record is not None and record[0] <= req.accepted and \
            (record[1] is None or record[1] > req.accepted)

    def check(self, req):
        """Whether ``req``'s response is legit (see the class docstring)."""
        self.checked += 1
        self.take(req, req.answered)
        got = _key(req.result)
        if any(_key(ref) == got for ref in req.refs):
            self._note(req, req.result, req.answered)
            return True
        if req.result.ok and self._legit_cached(req, req.result):
            self.stale_hits += 1
            kind = _stale_kind(req.result, req.refs[-1])
            self.stale_kinds[kind] = self.stale_kinds.get(kind, 0) + 1
            return True
        if not req.result.ok and req.raced and req.result.pte_addr in req.paths:
            self.raced_faults += 1
            return True
        self.mismatch(self.WRONG_ANSWER,
                      f"vm {req.vm_index} {req.access} {req.gpa:#x}, cycles "
                      f"{req.accepted}..{req.answered}", **_request_json(req),
                      rtl=req.result.to_json(), model=[r.to_json() for r in req.refs])
        return False

    def mismatch(self, rule, where, **details):
        """Record a mismatch: the ``rule`` broken, ``where`` (what, address, AXI ID,
        cycle) and JSON-ready ``details``; the first five are logged."""
        self.mismatches.append({"rule": rule, "reason": f"{rule}: {where}", **details})
        if len(self.mismatches) <= 5:
            self.tb.log.error("mismatch #%d: %s: %s%s", len(self.mismatches), rule, where,
                              "".join(f"\n  {k}: {v}" for k, v in details.items()))


class WalkTrafficChecker:
    """Checks the walks' memory traffic against the reference walks that the
    :class:`Scoreboard` takes. An AXI ID names a walk engine, not a request, so each PTE
    read and AtomicCompare is checked against every request in flight (accepted, not yet
    answered):

    * a read must be of an entry that one of their reference walks visits (a walk may
      read fewer: the walk cache serves upper levels);
    * an AtomicCompare must be of such an entry, with the word that AXI ID last read
      there (what its walk saw) as compare value, and be one of their reference walks'
      A/D updates of that entry: its swap value the update's new word, its compare value
      the old word or one between (the RTL's own updates, which change no translation,
      may have set some of the bits since the reference was taken: A by a read, then D
      owed by a write);
    * a translation a walk answered (not a TLB hit) leaves no A/D update owed: a fresh
      reference walk on the memory now writes none. Not checked when a model step may
      have run since the walk (the request raced one, or was accepted beside a request
      that did, whose walk it may have joined), nor at an entry the RTL never read, or
      that a model step changed since the RTL last read or updated it (the model may
      have cleared its A/D bits: aging, dirty logging). An entry the RTL read with A
      clear and the model left alone is owed its A by a walk through it, even one that
      did not read it again (a walk cache keeps an entry only once its A is set). An
      update at an entry that another request in flight visits may be owed by that
      request's walk, which read the entry and is still running, not by the answered
      one (which may use a walk-cache copy taken while A was set: SDM Vol. 3A §4.8,
      software that clears A without a flush may not see it set again); it is checked
      when every such request has been answered.

    Traffic is not checked while a request without a reference walk is in flight (one
    sent with the scoreboard off: its walk's entries are unknown). A violation is a
    mismatch of the scoreboard naming the rule, the entry, the AXI ID and the cycle.

    Members
    -------
    reads, compares : int
        PTE reads and AtomicCompares checked.
    walked : int
        Walked translations of VMs whose A/D bits the hardware sets checked for A/D
        updates left owed.
    """

    UNVISITED_READ = "PTE read of an entry no walk in flight visits"
    UNVISITED_COMPARE = "AtomicCompare of an entry no walk in flight visits"
    UNREAD_COMPARE = "AtomicCompare whose compare value is not the word its AXI ID read"
    NOT_AN_UPDATE = "AtomicCompare that is no A/D update of a walk in flight"
    UPDATE_OWED = "walked translation with an A/D update not done"

    def __init__(self, scoreboard, in_flight):
        """``in_flight()`` gives the requests accepted and not yet answered."""
        self.scoreboard, self.in_flight = scoreboard, in_flight
        self.reads = self.compares = self.walked = 0
        self._words = {}        # (AXI ID, address) -> the word that ID last read there
        # address -> (Scoreboard.generation, word) of its last transaction: the word
        # read, or written by a compare (None: unknown, after an error or a failed one)
        self._touched = {}
        # (request, addresses, requests in flight that visit them): updates left owed
        # at an answer while another walk may still be doing them
        self._deferred = []

    def observe(self, event):
        """A :class:`~hw.sim_axi.PteRead` or :class:`~hw.sim_axi.AtomicCompare` as
        the memory served it."""
        generation = self.scoreboard.generation
        if isinstance(event, PteRead):
            self._touched[event.addr] = (generation,
                                         event.word if event.resp == OKAY else None)
            self._read(event)
        else:
            self._touched[event.addr] = (generation, event.swap if event.ok else None)
            self._compare(event)

    def _requests(self):
        """The requests in flight, or None if the traffic cannot be checked now."""
        requests = list(self.in_flight())
        return None if any(not req.refs for req in requests) else requests

    def _flag(self, rule, event, **details):
        self.scoreboard.mismatch(rule, f"address {event.addr:#x}, AXI ID {event.ident}, "
                                 f"cycle {event.cycle}", addr=hex(event.addr),
                                 id=event.ident, cycle=event.cycle, **details)

    def _read(self, event):
        if event.resp == OKAY:
            self._words[(event.ident, event.addr)] = event.word
        else:
            self._words.pop((event.ident, event.addr), None)
        requests = self._requests()
        if requests is None:
            return
        self.reads += 1
        if not any(event.addr in req.paths for req in requests):
            self._flag(self.UNVISITED_READ, event,
                       in_flight=[_request_json(req) for req in requests])

    def _compare(self, event):
        requests = self._requests()
        if requests is None:
            return
        self.compares += 1
        walks = [req for req in requests if event.addr in req.paths]
        read = self._words.get((event.ident, event.addr))
        if not walks:
            self._flag(self.UNVISITED_COMPARE, event,
                       in_flight=[_request_json(req) for req in requests])
        elif read != event.compare:
            self._flag(self.UNREAD_COMPARE, event, compare=hex(event.compare),
                       read=None if read is None else hex(read))
        elif not any(_is_update(update, event) for req in walks for update in req.ad_writes):
            self._flag(self.NOT_AN_UPDATE, event, compare=hex(event.compare),
                       swap=hex(event.swap), updates=sorted(
                           [hex(a), hex(old), hex(new)] for req in walks
                           for a, old, new in req.ad_writes if a == event.addr))

    def answered(self, req):
        """``req`` was answered: if a walk translated it, no A/D update may be owed (at
        an entry another request in flight visits: once those are answered too)."""
        self._check_deferred()
        if not req.result.ok or req.hit or req.raced or req.beside_raced:
            return
        if self.scoreboard.tb.guests[req.vm_index].vm.opts.ad != "hardware":
            return
        self.walked += 1
        owed, deferred, others = [], set(), []
        for addr, old, new in self._owed(req):
            visiting = [r for r in self.in_flight() if r is not req and addr in r.paths]
            if visiting:
                deferred.add(addr)
                others += visiting
            else:
                owed.append((addr, old, new))
        self._flag_owed(req, owed)
        if deferred:
            self._deferred.append((req, deferred, others))

    def _owed(self, req):
        """The A/D updates a walk of ``req`` on the memory now would do that the RTL
        owes: at entries no model step changed since the RTL last read or updated."""
        now = self.scoreboard.walk_now(req)
        generation = self.scoreboard.generation
        owed = []
        for addr, old, new in now.ad_writes if now.ok else ():
            touched_in, word = self._touched.get(addr, (None, None))
            if touched_in == generation or word == old:    # no model step changed it
                owed.append((addr, old, new))
        return owed

    def _check_deferred(self):
        waiting = []
        for req, addrs, others in self._deferred:
            if any(r.answered is None for r in others):
                waiting.append((req, addrs, others))
            else:
                self._flag_owed(req, [u for u in self._owed(req) if u[0] in addrs])
        self._deferred = waiting

    def _flag_owed(self, req, owed):
        if owed:
            addr, old, new = owed[0]
            self.scoreboard.mismatch(
                self.UPDATE_OWED, f"address {addr:#x}, vm {req.vm_index} {req.access} "
                f"{req.gpa:#x}, cycles {req.accepted}..{req.answered}",
                addr=hex(addr), **_request_json(req),
                owed=[[hex(a), hex(o), hex(n)] for a, o, n in owed])


def _is_update(update, event):
    """Whether AtomicCompare ``event`` does the A/D update ``(address, old, new)``: it
    writes ``new`` over ``old`` or over a word holding part of the bits ``new`` adds."""
    addr, old, new = update
    compare = event.compare
    return (addr == event.addr and event.swap == new and compare != new
            and compare & old == old and compare & new == compare)


def record_result(result):
    """Append ``result`` (a JSON object) to the list in the file named by
    ``TDPWALK_RESULTS``, where the pytest side of a bench reads it; no-op without it."""
    out = os.environ.get("TDPWALK_RESULTS")
    if out:
        data = json.loads(open(out).read()) if os.path.exists(out) else []
        data.append(result)
        # Written whole or not at all: an interrupted run leaves the last complete list.
        with open(f"{out}.tmp", "w") as f:
            json.dump(data, f)
        os.replace(f"{out}.tmp", out)


async def hypervisor_access(guest, gpa, access, *, on_memory_fault=None):
    """One guest access on the hypervisor loop: the request goes to the RTL; a fault
    goes to the model's fault handler (``guest.vm.handle_fault``, a model step) and the
    access is retried, as KVM does on an EPT violation. The final response.

    ``guest`` has ``tb``, ``index``, ``vm``, ``name``, ``stats`` (counts by outcome) and
    ``translated(req)``; ``await on_memory_fault(gpa, started)`` handles MEMORY_FAULT (a
    TD's userspace conversion) before the retry and may return the GPA to retry with
    (``started``: the cycle this access began)."""
    results = []
    started = guest.tb.cycle()
    for _ in range(16):
        req = await guest.tb.access(guest.index, gpa, access)
        if req.result.ok:
            guest.translated(req)
            return req
        guest.stats["faults"] += 1
        result = await guest.tb.model_step(guest.vm.handle_fault, gpa, access)
        results.append(result.value)
        guest.stats[result.value] = guest.stats.get(result.value, 0) + 1
        if result is PfResult.MEMORY_FAULT and on_memory_fault is not None:
            gpa = await on_memory_fault(gpa, started) or gpa
        elif result is PfResult.EMULATE:
            guest.stats["emulated"] += 1
            return req
        elif result is PfResult.NOMEM:
            raise AssertionError(f"{guest.name}: out of table pages at {gpa:#x}")
    raise AssertionError(f"{guest.name}: no forward progress on {access} {gpa:#x}: "
                         f"last answer {req.result.to_json()}; the model's fault handler "
                         f"said {', '.join(results)}")


async def run_vcpus(access, rng, pattern, count, *, vcpus=4, stop=None):
    """``vcpus`` concurrent streams of ``await access(gpa, access)`` with addresses from
    ``pattern(rng)`` until ``count`` are done (or ``stop()`` is true); each stream has
    its own generator seeded from ``rng``."""
    left = [count]

    async def vcpu(seed):
        vcpu_rng = random.Random(seed)
        while left[0] > 0 and not (stop and stop()):
            left[0] -= 1
            await access(*pattern(vcpu_rng))

    tasks = [cocotb.start_soon(vcpu(rng.random())) for _ in range(vcpus)]
    for task in tasks:
        await task


class MmuPorts:
    """The MMU's ports by their Amaranth names (``req__payload``, ``inval_done``), on the
    generated ``tdpwalk_mmu`` or on the typed SystemVerilog wrapper (:mod:`hw.sv`), whose
    ports are named otherwise (``req``, ``m_axi_arvalid``): a test reads the same names
    on both. ``axi_prefix`` is the AXI ports' prefix for
    :class:`~cocotb_tests.axi_memory.HostMemoryAxi`."""

    def __init__(self, dut):
        self.dut = dut
        self.typed = dut._name == WRAPPER
        self.axi_prefix = "m_axi" if self.typed else "axi_"

    def __getattr__(self, name):
        if self.typed and name not in ("clk", "rst"):
            name = port_name(tuple(name.split("__")))
        return getattr(self.dut, name)


class MmuTB:
    """The MMU under test with its environment.

    Parameters
    ----------
    dut
        The cocotb handle of ``tdpwalk_mmu``, of its typed SystemVerilog wrapper
        ``tdpwalk_mmu_sv`` (its ports are read through :class:`MmuPorts`) or of the
        batch shell.
    memory : HostMemory
        Shared by every guest's model and the AXI memory.
    latency, stall, seed
        AXI memory latency (cycles), back-pressure probability and its seed.
    resp_stall : float
        Probability that ``resp.ready`` is low in a cycle: back-pressure on responses
        (seeded by ``seed``). A TLB hit held up by it answers later than
        :data:`HIT_CYCLES`, so :attr:`Response.hit` no longer tells hits apart.
    keep : bool
        Keep every response in :attr:`responses` (for the report).
    check : bool
        Run the scoreboard (off only to measure the bench's own speed).

    Members
    -------
    ports : MmuPorts
    guests : dict
        ``vm_index -> guest`` (anything with ``.vm``, a :class:`sw_model.tdp.Vm`).
    axi : HostMemoryAxi
    scoreboard : Scoreboard
    traffic : WalkTrafficChecker
        Checks every PTE read and AtomicCompare (when ``check`` is set at construction)
        and every walked answer.
    responses : list of Response
        Every answered request, in answer order (kept only when ``keep`` is set).
    flushes : int
        Invalidations completed.
    """

    def __init__(self, dut, memory, *, latency=1, stall=0.0, seed=0, keep=True, check=True,
                 resp_stall=0.0):
        if not 0 <= resp_stall < 1:
            raise ValueError(f"resp_stall must be a probability in [0, 1), got {resp_stall!r}")
        self.dut, self.memory, self.keep, self.check = dut, memory, keep, check
        self.resp_stall = resp_stall
        self._resp_rng = random.Random(seed)
        self.ports = ports = MmuPorts(dut)
        self.log = logging.getLogger("cocotb.tdpwalk")
        for channel in ("req", "resp", "inval"):
            logging.getLogger(f"cocotb.{dut._name}.{channel}").setLevel(logging.WARNING)
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        self.axi = HostMemoryAxi(dut, ports.axi_prefix, dut.clk, dut.rst, memory,
                                 period_ns=PERIOD_NS,
                                 latency=latency, stall=stall, seed=seed)
        self.vm_bits = len(ports.ctx__index)
        self.tag_bits = len(ports.req__payload) - 66 - self.vm_bits
        self.decoder = ResponseDecoder(self.tag_bits)
        self.inval_layout = inval_layout(self.vm_bits)
        self.guests = {}
        self.contexts = {}
        self.scoreboard = Scoreboard(self)
        self.traffic = WalkTrafficChecker(self.scoreboard, self.in_flight)
        if check:
            self.axi.on_transaction.append(self.traffic.observe)
        self.responses = []
        self.answered = 0
        self.flushes = 0
        self._serial = 0
        self._queue = collections.deque()           # requests not yet driven
        self._ctx_queue = collections.deque()       # (index, raw)
        self._inval_queue = collections.deque()     # (kind, vm, start, count, space)
        self._free_tags = collections.deque(range(1 << self.tag_bits))
        self._outstanding = {}                      # tag -> Response
        self._batch = ()                            # the requests of a running batch
        self._inval_waiters = []                    # [serial at accept, Event] for grace
        self._inval_done = Event()
        self._wake = Event()
        self._driving = None
        self._inval_driving = None
        self._inval_accepted = 0
        self._inval_completed = 0
        self.on_response = []                       # callbacks(Response)
        #: Requests per :meth:`run_batch` (the BatchShell's depth), 0 without the shell.
        self.batch_depth = len(dut.batch_accepted) // STAMP_BITS \
            if hasattr(dut, "batch_accepted") else 0

    # -- time -------------------------------------------------------------------------

    @staticmethod
    def cycle():
        return int(get_sim_time("ns")) // PERIOD_NS

    async def reset(self):
        for name in ("ctx__valid", "ctx__index", "ctx__data", "req__payload", "req__valid",
                     "inval__valid", "inval__payload", "axi__rdata", "axi__rresp", "axi__rid",
                     "axi__rlast", "axi__bresp", "axi__bid"):
            getattr(self.ports, name).value = 0
        self.ports.resp__ready.value = 1
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        cocotb.start_soon(self._pump())

    # -- what scenarios call ------------------------------------------------------------

    def add_guest(self, vm_index, guest):
        """Attach a guest (its ``.vm`` is a :class:`sw_model.tdp.Vm` whose sink should
        be ``RtlFlushSink(tb, vm_index)``) and write its context."""
        self.guests[vm_index] = guest
        self.sync_context(vm_index)

    def sync_context(self, vm_index):
        """Write the context if the VM's vCPU roots changed (new root after a fast zap).
        A TD (``vm.tdx``) gets its external root and shared bit as well."""
        vm = self.guests[vm_index].vm
        tdx = getattr(vm, "tdx", None)
        if tdx is not None and not tdx.external.hkid_assigned:
            return          # a torn-down TD: no vCPU runs, its roots are gone
        context = VmContext(fmt=vm.fmt, root=vm.root_for(0), vm=vm.opts) if tdx is None else \
            VmContext(fmt=vm.fmt, root=vm.root_for(0), vm=vm.opts,
                      ext_root=vm.external_root_for(0), shared_bit=tdx.shared_bit)
        if self.contexts.get(vm_index) != context:
            self.contexts[vm_index] = context
            self._ctx_queue.append((vm_index, context.raw()))
            self._wake.set()

    async def access(self, vm_index, gpa, access):
        """Send one request and wait for its :class:`Response`."""
        req = self.submit(vm_index, gpa, access)
        await req.done.wait()
        return req

    def submit(self, vm_index, gpa, access):
        """Queue one request; await ``req.done`` for the answer."""
        req = Response(self._serial, vm_index, gpa, access)
        self._serial += 1
        self._queue.append(req)
        self._wake.set()
        return req

    def in_flight(self):
        """The requests accepted and not yet answered (a running batch's: all of them)."""
        return [*self._outstanding.values(), *self._batch]

    def queue_inval(self, kind, vm_index, start, count, space=InvalSpace.BOTH):
        self._inval_queue.append((kind, vm_index, start, count, space))
        self._wake.set()

    async def model_step(self, fn, *args, **kwargs):
        """Run one model operation atomically (the simulator is paused), then take the
        reference of every request in flight, and of the one offered on the request port
        (the RTL may accept it before the step's invalidations and walk what its walk
        cache held before the step: its reference before the step is taken too), write
        changed roots, and drive the invalidations the step asked for, waiting until each
        is done and every request older than it has been answered (the RCU grace period:
        no walk can still read a table the model frees). The operation's return value.

        A guest whose flush sink checks obligations (:func:`checked_flush_sink`) is told
        first that the RTL may have cached its tables as they are: between model steps
        only the RTL's own A/D updates change them."""
        for guest in self.guests.values():
            sink = getattr(guest.vm, "sink", None)
            if isinstance(sink, FlushObligations):
                sink.observe()
        offered = [] if self._driving is None else [self._driving]
        for req in offered:
            self.scoreboard.take(req, self.cycle())
        result = fn(*args, **kwargs)
        self.scoreboard.changed()
        cycle = self.cycle()
        for req in [*self._outstanding.values(), *offered]:
            req.raced = True
            self.scoreboard.take(req, cycle)
        for index in self.guests:
            self.sync_context(index)
        await self.drain_invals()
        return result

    async def drain_invals(self):
        while self._inval_queue or self._inval_driving is not None or \
                self._inval_completed < self._inval_accepted:
            self._inval_done.clear()
            await self._inval_done.wait()
        while self._inval_waiters:
            await self._inval_waiters[-1][1].wait()

    async def quiesce(self):
        """Wait until every queued request has been answered."""
        while self._queue or self._outstanding or self._driving is not None:
            some = next(iter(self._outstanding.values()), None) or self._driving \
                or self._queue[-1]
            await some.done.wait()

    def counters(self):
        from hw.mmu import COUNTERS
        value = self.ports.counters.value.to_unsigned()
        width = len(self.ports.counters) // len(COUNTERS)
        return {name: (value >> (i * width)) & ((1 << width) - 1)
                for i, name in enumerate(COUNTERS)}

    # -- the per-cycle driver and monitor -------------------------------------------------

    def _request_word(self, req, tag):
        """Give ``req`` its tag and the root and space the RTL will use; the request
        word (``hw.walker.request_layout``)."""
        req.tag = tag
        context = self.contexts[req.vm_index]
        req.root = context.root_of(req.gpa)
        if context.td:
            req.private = context.is_private(req.gpa)
            req.gfn = (req.gpa & ~(1 << context.shared_bit)) >> 12
        return ((req.gpa & ((1 << 64) - 1)) | (ACCESS_IDS[req.access] << 64)
                | (req.vm_index << 66) | (tag << (66 + self.vm_bits)))

    def _answered(self, req, raw, cycle):
        """Record the response word ``raw`` of ``req`` answered at ``cycle``: decode,
        check, keep, call back, wake the waiter."""
        req.answered = cycle
        req.result = self.decoder.result(raw, req.gpa, req.access,
                                         self.guests[req.vm_index].vm.fmt.arch)
        if self.check:
            self.scoreboard.check(req)
            self.traffic.answered(req)
        self.answered += 1
        if self.keep:
            self.responses.append(req)
        for callback in self.on_response:
            callback(req)
        req.done.set()

    async def run_batch(self, items):
        """Translate ``items`` (``(vm_index, gpa, access)``, at most
        ``batch_depth``) in one batch of the :class:`~cocotb_tests.batch_shell.BatchShell`
        top: requests back to back with no Python in the loop, each response checked
        as the per-cycle driver checks it. The TB must be idle (no request, context
        write or invalidation pending), and stays so; the list of :class:`Response`."""
        if not hasattr(self.dut, "batch_go"):
            raise RuntimeError("run_batch needs the BatchShell top (runner.run_mmu(..., "
                               "shell=True))")
        if not 0 < len(items) <= self.batch_depth:
            raise ValueError(f"a batch has 1 to {self.batch_depth} requests, got {len(items)}")
        if self._queue or self._outstanding or self._driving or self._ctx_queue \
                or self._inval_queue or self._inval_driving \
                or self._inval_completed < self._inval_accepted:
            raise RuntimeError("run_batch: the TB is not idle")
        dut, clk = self.dut, self.dut.clk
        reqs, words = [], 0
        width = len(dut.req__payload)
        for slot, (vm_index, gpa, access) in enumerate(items):
            req = Response(self._serial, vm_index, gpa, access)
            self._serial += 1
            words |= self._request_word(req, slot) << (slot * width)
            reqs.append(req)
        start = self.cycle()
        if self.check:
            for req in reqs:        # no model step can run during the batch
                self.scoreboard.take(req, start)
        dut.batch_req.value = words
        dut.batch_count.value = len(reqs)
        self._batch = reqs
        dut.batch_go.value = 1
        await RisingEdge(clk)
        dut.batch_go.value = 0
        base = self.cycle()
        await RisingEdge(dut.batch_done)
        accepted = dut.batch_accepted.value.to_unsigned()
        answers = dut.batch_resp.value.to_unsigned()
        stamp_mask = (1 << STAMP_BITS) - 1
        first = self.batch_depth - len(reqs)     # the shell's buffers shift in from the top
        for slot, req in enumerate(reqs, first):
            req.accepted = base + ((accepted >> (slot * STAMP_BITS)) & stamp_mask)
        size = self.decoder.layout.size
        for j in range(first, self.batch_depth):
            answer = answers >> (j * (size + STAMP_BITS))
            raw = answer & ((1 << size) - 1)
            self._answered(reqs[self.decoder.tag(raw)], raw,
                           base + ((answer >> size) & stamp_mask))
        self._batch = ()
        return reqs

    async def _pump(self):
        dut = self.ports
        clk = dut.clk
        req_valid, req_ready, req_payload = dut.req__valid, dut.req__ready, dut.req__payload
        resp_valid, resp_payload = dut.resp__valid, dut.resp__payload
        inval_valid, inval_ready = dut.inval__valid, dut.inval__ready
        inval_payload, inval_done = dut.inval__payload, dut.inval_done
        ctx_valid, ctx_index, ctx_data = dut.ctx__valid, dut.ctx__index, dut.ctx__data
        tag_of = self.decoder.tag
        resp_ready = dut.resp__ready
        ready = True            # resp.ready as driven for the coming edge
        resp_ready.value = 1
        ctx_on = False
        edge = RisingEdge(clk)
        while True:
            if not (self._queue or self._outstanding or self._driving or self._inval_queue
                    or self._inval_driving or self._ctx_queue or ctx_on
                    or self._inval_completed < self._inval_accepted):
                self._wake.clear()
                await self._wake.wait()
            await edge
            cycle = self.cycle()
            # sample at the edge
            if ctx_on:
                ctx_valid.value = 0
                ctx_on = False
            if ready and int(resp_valid.value):
                raw = resp_payload.value.to_unsigned()
                req = self._outstanding.pop(tag_of(raw))
                self._free_tags.append(req.tag)
                self._answered(req, raw, cycle)
            if self.resp_stall:
                now = self._resp_rng.random() >= self.resp_stall
                if now != ready:
                    ready = now
                    resp_ready.value = int(ready)
            if self._driving is not None and int(req_ready.value):
                req = self._driving
                req.accepted = cycle
                req.beside_raced = any(r.raced for r in self._outstanding.values())
                self._outstanding[req.tag] = req
                if self.check:
                    self.scoreboard.take(req, cycle)
                self._driving = None
            inval_busy = self._inval_completed < self._inval_accepted
            if self._inval_driving is not None and int(inval_ready.value):
                kind, vm, start, count, space = self._inval_driving
                self._inval_accepted += 1
                self.scoreboard.invalidated(None if kind == InvalKind.ALL else vm,
                                            None if kind != InvalKind.RANGE else start,
                                            count, cycle, space)
                if self._outstanding:
                    self._inval_waiters.append([max(r.serial for r in
                                                    self._outstanding.values()), Event()])
                self._inval_driving = None
            if inval_busy and int(inval_done.value):
                self._inval_completed += 1
                self.flushes += 1
                self._inval_done.set()
            if self._inval_waiters:
                low = min((r.serial for r in self._outstanding.values()), default=None)
                while self._inval_waiters and (low is None or self._inval_waiters[0][0] < low):
                    self._inval_waiters.pop(0)[1].set()
            # drive for the next edge: contexts first, then invalidations, then requests
            if self._ctx_queue and self._driving is None:
                index, raw = self._ctx_queue.popleft()
                ctx_index.value, ctx_data.value, ctx_valid.value = index, raw, 1
                ctx_on = True
            if self._inval_driving is None:
                if self._inval_queue and self._driving is None and not ctx_on:
                    self._inval_driving = item = self._inval_queue.popleft()
                    kind, vm, start, count, space = item
                    inval_payload.value = self.inval_layout.const(
                        {"kind": kind, "vm": vm, "start": start, "count": count,
                         "space": space}).as_value().value
                    inval_valid.value = 1
                else:
                    inval_valid.value = 0
            if self._driving is None:
                if self._queue and self._free_tags and not ctx_on and \
                        self._inval_driving is None and not self._inval_queue:
                    req = self._driving = self._queue.popleft()
                    req_payload.value = self._request_word(req, self._free_tags.popleft())
                    req_valid.value = 1
                else:
                    req_valid.value = 0
