"""The RTL's decode constants are the model's format descriptions, not retyped."""

import pytest

from sw_model.formats import ACCESSES, AD_MODES, FAULT_KINDS, FORMAT_NAMES, get_format

from hw.decode import (ACCESS_IDS, AD_IDS, ALL_CONSTANTS, FORMAT_IDS, KIND_IDS, PA_WIDTH,
                       format_constants)


def test_encodings_follow_the_model_tuples():
    assert list(FORMAT_IDS) == list(FORMAT_NAMES) and list(FORMAT_IDS.values()) == list(range(7))
    assert list(ACCESS_IDS) == list(ACCESSES)
    assert list(AD_IDS) == list(AD_MODES)
    assert list(KIND_IDS) == list(FAULT_KINDS)
    assert PA_WIDTH == 56


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_constants_match_format(name):
    fmt, c = get_format(name), format_constants(name)
    assert (c.levels, c.gpa_bits, c.root_index_bits) == (fmt.levels, fmt.gpa_bits,
                                                         fmt.root_index_bits)
    assert c.leaf_levels == sum(1 << level for level in fmt.leaf_levels)
    assert (c.frame_lsb, c.frame_width) == (fmt.frame_field.lsb, fmt.frame_field.width)
    assert 1 << c.bit_a == fmt.fields["a"].mask and 1 << c.bit_d == fmt.fields["d"].mask
    lo, hi = fmt.pa_bits_range
    for (level, leaf), (static, pa_dep, nxe_dep) in c.reserved.items():
        for pa_bits in (lo, hi):
            for nxe in (False, True):
                vm = fmt.vm_options(pa_bits=pa_bits, nxe=nxe)
                mask = static | (pa_dep & ~((1 << pa_bits) - 1)) | (0 if nxe else nxe_dep)
                assert mask == fmt.reserved_mask(level, leaf, vm)


def test_all_constants_cover_every_format():
    assert [c.name for c in ALL_CONSTANTS] == list(FORMAT_NAMES)


def test_fsm_state_encoding_documented_in_docs_rtl_md():
    from amaranth.hdl import Fragment
    from hw.engine import WalkEngine
    engine = WalkEngine(tag_bits=8)
    module = engine.elaborate(None)
    # Module._generated is Amaranth 0.5's record of the FSMs it built (pinned < 0.6).
    encoding = dict(module._generated["walk"].encoding)
    Fragment.get(module, None)              # consume both, or Amaranth warns they are unused
    Fragment.get(engine, None)
    assert encoding == {"IDLE": 0, "DONE": 1, "WAIT": 2, "READ": 3, "AD": 4}
