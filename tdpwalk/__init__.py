"""tdpwalk's command line (``tdpwalk``, :mod:`tdpwalk.cli`): above the RTL (:mod:`hw`)
and the co-simulation (:mod:`cocotb_tests`), which do not import it."""
