"""Nested virtualization: an L1 hypervisor on the TDP core, shadow TDP and KPOP."""
