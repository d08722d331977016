# tests: one Check suite per module (added by each module's section below),
# plus integration tests that start lacunad.
if HAVE_CHECK
check_PROGRAMS += tests/check_common
tests_check_common_SOURCES = tests/check_common.c
tests_check_common_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_common_LDADD = $(CHECK_LDADD)
endif
TESTS += $(check_PROGRAMS)

# ---- tokenizer and chat templates ------------------------------------------
# The real-model case reads models/ from the source tree (or $LACUNA_MODEL)
# and skips with a message when the model is absent.
if HAVE_CHECK
check_PROGRAMS += tests/check_tokenizer
tests_check_tokenizer_SOURCES = tests/check_tokenizer.c
tests_check_tokenizer_CPPFLAGS = $(AM_CPPFLAGS) -DLC_SRCDIR='"$(abs_top_srcdir)"'
tests_check_tokenizer_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_tokenizer_LDADD = $(CHECK_LDADD)
endif
EXTRA_DIST += tests/fixtures/tokenizer_smollm2.json scripts/gen_tokenizer_fixtures.py
