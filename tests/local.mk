# tests: one Check suite per module (added by each module's section below),
# plus integration tests that start lacunad.
# Tests find the sources, the build and the real model through the environment
# (tests/testutil.h): LACUNA_MODEL defaults to the fetched SmolLM2 and
# LACUNA_GEMMA_MODEL to the fetched Gemma 3 270M. OpenMP
# threads wait passively: spinning ones starve BLAS and the other suites
# running in parallel (10x slower forward passes on 2 cores).
AM_TESTS_ENVIRONMENT = LACUNA_SRCDIR='$(abs_top_srcdir)' LACUNA_BUILDDIR='$(abs_top_builddir)' \
	LACUNA_MODEL="$${LACUNA_MODEL:-$(abs_top_srcdir)/models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
	LACUNA_GEMMA_MODEL="$${LACUNA_GEMMA_MODEL:-$(abs_top_srcdir)/models/gemma-3-270m-q4_k_m.gguf}" \
	OMP_WAIT_POLICY="$${OMP_WAIT_POLICY:-passive}"; \
	export LACUNA_SRCDIR LACUNA_BUILDDIR LACUNA_MODEL LACUNA_GEMMA_MODEL OMP_WAIT_POLICY;
EXTRA_DIST += tests/testutil.h
# The engine suites' tiny random models.
TINYMODEL_SRC = tests/tinymodel.c tests/tinymodel.h tools/mkmodel.c tools/mkmodel_vocab.c tools/mkmodel.h
# Their request helpers.
SCHEDUTIL_SRC = tests/schedutil.c tests/schedutil.h
if HAVE_CHECK
check_PROGRAMS += tests/check_common
tests_check_common_SOURCES = tests/check_common.c
tests_check_common_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_common_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_kv
tests_check_kv_SOURCES = tests/check_kv.c
tests_check_kv_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_kv_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_gguf
tests_check_gguf_SOURCES = tests/check_gguf.c tests/check_gguf_quant.c
tests_check_gguf_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_gguf_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_model
tests_check_model_SOURCES = tests/check_model.c tools/mkmodel.c tools/mkmodel_vocab.c
tests_check_model_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_model_LDADD = $(CHECK_LDADD)

# Gemma 3 270M against Hugging Face; exits 77 (skip) without the model.
check_PROGRAMS += tests/check_gemma
tests_check_gemma_SOURCES = tests/check_gemma.c
tests_check_gemma_CFLAGS = $(CHECK_CFLAGS_ALL) -DLC_SRCDIR=\"$(abs_top_srcdir)\"
tests_check_gemma_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_ops
tests_check_ops_SOURCES = tests/check_ops.c
tests_check_ops_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_ops_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_qmatmul
tests_check_qmatmul_SOURCES = tests/check_qmatmul.c
tests_check_qmatmul_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_qmatmul_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_sampler
tests_check_sampler_SOURCES = tests/check_sampler.c
tests_check_sampler_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sampler_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_attn
tests_check_attn_SOURCES = tests/check_attn.c
tests_check_attn_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_attn_LDADD = $(CHECK_LDADD)
endif
TESTS += $(check_PROGRAMS)

# ---- tokenizer and chat templates ------------------------------------------
# The real-model case reads $LACUNA_MODEL (testutil.h); the program exits 77
# (SKIP) when the model is absent.
if HAVE_CHECK
check_PROGRAMS += tests/check_tokenizer
tests_check_tokenizer_SOURCES = tests/check_tokenizer.c
tests_check_tokenizer_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_tokenizer_LDADD = $(CHECK_LDADD)
endif
EXTRA_DIST += tests/fixtures/tokenizer_smollm2.json scripts/gen_tokenizer_fixtures.py \
	tests/fixtures/logits_smollm2.json scripts/gen_logits_fixtures.py \
	tests/fixtures/logits_gemma3.json scripts/gen_logits_fixtures_gemma.py
EXTRA_DIST += tests/fixtures/tokenizer_smollm2.json scripts/gen_tokenizer_fixtures.py tests/fixtures/tokenizer_gemma3.json

# ---- scheduler ---------------------------------------------------------------
# Tiny random models are written by the test itself (tests/tinymodel.c);
# the SmolLM2 case reads $LACUNA_MODEL and the program SKIPs when absent.
if HAVE_CHECK
check_PROGRAMS += tests/check_sched
tests_check_sched_SOURCES = tests/check_sched.c $(SCHEDUTIL_SRC) $(TINYMODEL_SRC)
tests_check_sched_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sched_LDADD = $(CHECK_LDADD)
endif

# ---- valgrind -----------------------------------------------------------------
# A subset of the unit tests and the fuzz replays under memcheck (see the
# script for which and why).
check-valgrind: $(check_PROGRAMS)
	$(top_srcdir)/scripts/valgrind.sh $(abs_top_builddir)
.PHONY: check-valgrind
EXTRA_DIST += scripts/valgrind.sh
# ---- sparse attention end to end (tiny model through the scheduler) -------------
if HAVE_CHECK
check_PROGRAMS += tests/check_sparse
tests_check_sparse_SOURCES = tests/check_sparse.c $(TINYMODEL_SRC)
tests_check_sparse_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sparse_LDADD = $(CHECK_LDADD)
endif

# ---- constrained decoding: grammar engine and JSON schemas --------------------
if HAVE_CHECK
check_PROGRAMS += tests/check_grammar
tests_check_grammar_SOURCES = tests/check_grammar.c
tests_check_grammar_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_grammar_LDADD = $(CHECK_LDADD)
endif

if HAVE_CHECK
# Sliding-window layers keep only their window: the same outputs as keeping every position.
check_PROGRAMS += tests/check_sched_window
tests_check_sched_window_SOURCES = tests/check_sched_window.c $(SCHEDUTIL_SRC) $(TINYMODEL_SRC)
tests_check_sched_window_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sched_window_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_sched_grammar
tests_check_sched_grammar_SOURCES = tests/check_sched_grammar.c tools/mkmodel.c tools/mkmodel_vocab.c tools/mkmodel.h
tests_check_sched_grammar_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sched_grammar_LDADD = $(CHECK_LDADD)
endif

# ---- chat templates with tools (Qwen2.5) ----------------------------------------
if HAVE_CHECK
check_PROGRAMS += tests/check_chat_tools
tests_check_chat_tools_SOURCES = tests/check_chat_tools.c tools/mkmodel.c tools/mkmodel_vocab.c tools/mkmodel.h
tests_check_chat_tools_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_chat_tools_LDADD = $(CHECK_LDADD)
endif
EXTRA_DIST += tests/fixtures/chat_tools_qwen25.json tests/fixtures/qwen2.5_chat_template.jinja \
	scripts/gen_chat_tools_fixtures.py
EXTRA_DIST += tests/integration/test_structured.py

if HAVE_CHECK
check_PROGRAMS += tests/check_toolcall
tests_check_toolcall_SOURCES = tests/check_toolcall.c
tests_check_toolcall_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_toolcall_LDADD = $(CHECK_LDADD)
endif

# ---- context parallelism (src/attn/cp) ----------------------------------------
if HAVE_CHECK
check_PROGRAMS += tests/check_cp
tests_check_cp_SOURCES = tests/check_cp.c tests/check_cp_model.c tests/cp_exec_case.c tests/cp_exec_case.h $(TINYMODEL_SRC)
tests_check_cp_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_cp_LDADD = $(CHECK_LDADD)

# The GPU ring's host map (which rows, packs and views each ring step has).
check_PROGRAMS += tests/check_cp_ring_map
tests_check_cp_ring_map_SOURCES = tests/check_cp_ring_map.c
tests_check_cp_ring_map_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_cp_ring_map_LDADD = $(CHECK_LDADD)

# The start-up exchange of a ring spanning hosts, on loopback.
check_PROGRAMS += tests/check_cp_join
tests_check_cp_join_SOURCES = tests/check_cp_join.c
tests_check_cp_join_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_cp_join_LDADD = $(CHECK_LDADD)
endif

# ---- integration: serving under concurrency ------------------------------------
# Run by tests/integration/run.sh. Head-of-line blocking behind a long prefill
# (the real model).
EXTRA_DIST += tests/integration/test_hol.py
# Outputs independent of the batch and of the prefix cache, on each kernel set.
EXTRA_DIST += tests/integration/test_determinism.py
# Gemma 3 served (its fixture is distributed above; the test was not).
EXTRA_DIST += tests/integration/test_gemma.py
# The paired retrieval harness (bench/accuracy/paired.py): statistics, kernel sets.
EXTRA_DIST += tests/integration/test_paired.py

# ---- OpenBLAS core types ------------------------------------------------------
# check_sched's batch-invariance cases under each OPENBLAS_CORETYPE this CPU
# runs; SKIP (77) without OpenBLAS.
TESTS += tests/blas_coretypes.sh
EXTRA_DIST += tests/blas_coretypes.sh

# ---- the scheduler under injected allocation failures -------------------------
# Our own code's malloc, calloc, realloc and posix_memalign go through the
# test's counter (ld --wrap), which makes a chosen one fail.
if HAVE_CHECK
check_PROGRAMS += tests/check_sched_oom
tests_check_sched_oom_SOURCES = tests/check_sched_oom.c $(TINYMODEL_SRC)
tests_check_sched_oom_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_sched_oom_LDFLAGS = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign
tests_check_sched_oom_LDADD = $(CHECK_LDADD)
endif
