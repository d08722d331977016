# tests: one Check suite per module (added by each module's section below),
# plus integration tests that start lacunad.
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
endif
TESTS += $(check_PROGRAMS)
