"""tdpwalk's RTL in Amaranth: the stage-2 page-table walker (:mod:`hw.walker`), its AXI
signature (:mod:`hw.axi`), decode constants generated from the model's format
descriptions (:mod:`hw.decode`) and a simulator harness (:mod:`hw.sim`). See
docs/rtl.md."""
