"""HostMemory: capacity, the table allocator, 64-bit little-endian accessors, the
zero-copy byte view, error reporting and poisoning (bus-error injection)."""

import numpy as np
import pytest

from sw_model.memory import PAGE_SIZE, HostMemory, MemoryAccessError, OutOfTablePages

# -- construction and capacity ------------------------------------------------------------


def test_capacity_and_page_counts():
    mem = HostMemory(64 << 10)
    assert mem.capacity == 64 << 10
    assert mem.total_pages == mem.free_pages == 16
    assert mem.view.nbytes == 64 << 10 and mem.words.size == 8 << 10


def test_default_size_is_64_mib():
    mem = HostMemory()
    assert mem.capacity == 64 << 20 and mem.base == 0


def test_large_memory_is_cheap_and_zero():
    # Storage is allocated zero-filled; untouched pages are never written.
    mem = HostMemory(1 << 30)
    assert mem.read64((1 << 30) - 8) == 0 and mem.free_pages == 1 << 18


@pytest.mark.parametrize("size", [0, -4096, 4095, 4097, 1.5 * 4096, "4096"])
def test_bad_size_is_rejected(size):
    with pytest.raises(ValueError, match="size"):
        HostMemory(size)


@pytest.mark.parametrize("base", [-4096, 0x800, "0"])
def test_bad_base_is_rejected(base):
    with pytest.raises(ValueError, match="base"):
        HostMemory(4096, base=base)


def test_memory_beyond_64_bits_is_rejected():
    with pytest.raises(ValueError, match="64-bit"):
        HostMemory(8192, base=(1 << 64) - 4096)


def test_contains():
    mem = HostMemory(8192, base=0x10000)
    assert mem.contains(0x10000) and mem.contains(0x11ff8)
    assert not mem.contains(0xfff8) and not mem.contains(0x12000)
    assert not mem.contains(0x11ffc, 8) and mem.contains(0x11ffc, 4)


# -- allocator -------------------------------------------------------------------------------


def test_4k_tables_are_aligned_distinct_and_counted():
    mem = HostMemory(16 * PAGE_SIZE)
    addrs = [mem.alloc_table() for _ in range(16)]
    assert len(set(addrs)) == 16
    assert all(a % PAGE_SIZE == 0 and mem.contains(a, PAGE_SIZE) for a in addrs)
    assert mem.free_pages == 0 and all(mem.is_allocated(a) for a in addrs)
    with pytest.raises(OutOfTablePages):
        mem.alloc_table()


def test_16k_tables_are_16k_aligned_even_when_the_base_is_not():
    mem = HostMemory(32 * PAGE_SIZE, base=0x5000)
    first = mem.alloc_table(16384)
    assert first % 16384 == 0 and mem.contains(first, 16384)
    assert mem.free_pages == 32 - 4
    second = mem.alloc_table(16384)
    assert second % 16384 == 0 and abs(second - first) >= 16384


def test_16k_exhaustion_with_4k_pages_left():
    # Eight pages; one 4 KiB table in each 16 KiB block leaves six free pages but no
    # aligned 16 KiB block.
    mem = HostMemory(8 * PAGE_SIZE)
    blockers = [mem.alloc_table() for _ in range(8)]
    for addr in blockers:
        if addr % 16384 != 0:
            mem.free_table(addr)
    assert mem.free_pages == 6
    with pytest.raises(OutOfTablePages, match="16384"):
        mem.alloc_table(16384)
    assert mem.free_pages == 6
    assert mem.alloc_table() % PAGE_SIZE == 0             # 4 KiB still works


def test_out_of_table_pages_is_a_memory_error():
    assert issubclass(OutOfTablePages, MemoryError)


@pytest.mark.parametrize("nbytes", [0, 2048, 8192, 65536])
def test_only_4k_and_16k_tables(nbytes):
    with pytest.raises(ValueError, match="4096 or 16384"):
        HostMemory(16 * PAGE_SIZE).alloc_table(nbytes)


def test_freed_tables_are_reused_and_zeroed():
    mem = HostMemory(2 * PAGE_SIZE)
    a = mem.alloc_table()
    b = mem.alloc_table()
    mem.write64(a + 8, 0xdead_beef)
    mem.read_page(a)[:] = 0xffff_ffff_ffff_ffff
    mem.free_table(a)
    assert mem.free_pages == 1 and not mem.is_allocated(a) and mem.is_allocated(b)
    assert mem.alloc_table() == a
    assert not mem.read_page(a).any()


def test_freed_16k_table_is_reused():
    mem = HostMemory(4 * PAGE_SIZE)
    root = mem.alloc_table(16384)
    with pytest.raises(OutOfTablePages):
        mem.alloc_table()
    mem.free_table(root, 16384)
    assert mem.free_pages == 4
    assert mem.alloc_table(16384) == root


def test_free_errors():
    mem = HostMemory(8 * PAGE_SIZE)
    a = mem.alloc_table()
    mem.free_table(a)
    with pytest.raises(ValueError, match="double free"):
        mem.free_table(a)
    with pytest.raises(ValueError):
        mem.free_table(a + 8)                      # not a table address
    with pytest.raises(ValueError):
        mem.free_table(8 * PAGE_SIZE)              # outside memory
    root = mem.alloc_table(16384)
    with pytest.raises(ValueError):
        mem.free_table(root + PAGE_SIZE, 16384)    # not 16 KiB aligned


def test_owner_tags():
    mem = HostMemory(8 * PAGE_SIZE)
    a = mem.alloc_table(owner="mirror")
    b = mem.alloc_table(16384, owner="s-ept")
    c = mem.alloc_table()
    assert mem.owner_of(a + 0x800) == "mirror"
    assert mem.owner_of(b) == mem.owner_of(b + 3 * PAGE_SIZE) == "s-ept"
    assert mem.owner_of(c) is None
    mem.free_table(b, 16384)
    assert mem.owner_of(b) is None


# -- 64-bit accessors and the byte view --------------------------------------------------------


def test_read_write_round_trip():
    mem = HostMemory(PAGE_SIZE, base=0x4000)
    for i, value in enumerate((0, 1, 0x8000_0000_0000_0000, (1 << 64) - 1)):
        mem.write64(0x4000 + 8 * i, value)
        assert mem.read64(0x4000 + 8 * i) == value
        assert type(mem.read64(0x4000 + 8 * i)) is int


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_values_must_fit_64_bits(value):
    mem = HostMemory(PAGE_SIZE)
    with pytest.raises(ValueError, match="64 bits"):
        mem.write64(0, value)
    with pytest.raises(ValueError, match="64 bits"):
        mem.cmpxchg64(0, 0, value)
    assert mem.read64(0) == 0


def test_little_endian_bytes_through_the_view():
    mem = HostMemory(PAGE_SIZE, base=0x10000)
    mem.write64(0x10010, 0x0123_4567_89ab_cdef)
    assert bytes(mem.view[0x10:0x18]) == bytes.fromhex("efcdab8967452301")
    # Zero-copy both ways: a byte store through the view is seen by read64.
    mem.view[0x18:0x20] = bytes.fromhex("0102030405060708")
    assert mem.read64(0x10018) == 0x0807_0605_0403_0201
    assert mem.words[3] == 0x0807_0605_0403_0201
    assert mem.view.readonly is False and mem.view.format == "B"


def test_cmpxchg():
    mem = HostMemory(PAGE_SIZE)
    mem.write64(0x20, 5)
    assert mem.cmpxchg64(0x20, 5, 7) == (True, 5)
    assert mem.read64(0x20) == 7
    assert mem.cmpxchg64(0x20, 5, 9) == (False, 7)
    assert mem.read64(0x20) == 7


def test_read_page_is_a_writable_view():
    mem = HostMemory(4 * PAGE_SIZE)
    root = mem.alloc_table(16384)
    page = mem.read_page(root, 16384)
    assert page.shape == (2048,) and page.dtype == np.dtype("<u8")
    page[2047] = 0xabc
    page[::2] |= 1
    assert mem.read64(root + 0x3ff8) == 0xabc
    assert mem.read64(root) == 1 and mem.read64(root + 8) == 0


def test_nonzero_words():
    mem = HostMemory(2 * PAGE_SIZE, base=0x8000)
    mem.write64(0x8008, 3)
    mem.write64(0x9ff8, 1 << 63)
    assert mem.nonzero_words() == {0x8008: 3, 0x9ff8: 1 << 63}


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", [0x3ff8, 0x8000, 0x7ffc, 1 << 62])
def test_out_of_range_accesses_name_the_address(addr):
    mem = HostMemory(4 * PAGE_SIZE, base=0x4000)      # backs [0x4000, 0x8000)
    for op in (lambda: mem.read64(addr), lambda: mem.write64(addr, 1),
               lambda: mem.cmpxchg64(addr, 0, 1)):
        with pytest.raises(MemoryAccessError, match=f"{addr:#x}"):
            op()


@pytest.mark.parametrize("offset", [1, 2, 4, 7])
def test_misaligned_accesses(offset):
    mem = HostMemory(PAGE_SIZE)
    with pytest.raises(MemoryAccessError, match="misaligned"):
        mem.read64(0x10 + offset)
    with pytest.raises(MemoryAccessError, match="misaligned"):
        mem.write64(0x10 + offset, 0)
    with pytest.raises(MemoryAccessError, match="misaligned"):
        mem.cmpxchg64(0x10 + offset, 0, 1)


def test_non_integer_address():
    mem = HostMemory(PAGE_SIZE)
    with pytest.raises(TypeError):
        mem.read64(8.0)
    assert mem.read64(np.uint64(8)) == 0


def test_read_page_outside_memory():
    mem = HostMemory(4 * PAGE_SIZE)
    with pytest.raises(MemoryAccessError):
        mem.read_page(3 * PAGE_SIZE, 16384)


# -- poison ------------------------------------------------------------------------------


def test_poison_makes_every_access_to_that_word_a_bus_error():
    mem = HostMemory(PAGE_SIZE)
    mem.write64(0x100, 42)
    mem.poison(0x100)
    for op in (lambda: mem.read64(0x100), lambda: mem.write64(0x100, 1),
               lambda: mem.cmpxchg64(0x100, 42, 1)):
        with pytest.raises(MemoryAccessError, match="poison"):
            op()
    assert mem.read64(0xf8) == 0 and mem.read64(0x108) == 0     # neighbours unaffected
    mem.unpoison(0x100)
    assert mem.read64(0x100) == 42


def test_poison_outside_memory_is_an_error():
    mem = HostMemory(PAGE_SIZE)
    with pytest.raises(MemoryAccessError):
        mem.poison(PAGE_SIZE)
    with pytest.raises(MemoryAccessError):
        mem.poison(4)


def test_a_freed_poisoned_page_can_be_allocated_again():
    # Freeing a table clears the poison of its words: a reused table is clean.
    mem = HostMemory(PAGE_SIZE)
    table = mem.alloc_table()
    mem.poison(table)
    mem.poison(table + 8)
    mem.free_table(table)
    assert mem.alloc_table() == table
    assert mem.read64(table) == 0 and mem.read64(table + 8) == 0
