# tests: one Check suite per module (added by each module's section below),
# plus integration tests that start lacunad.
if HAVE_CHECK
check_PROGRAMS += tests/check_common
tests_check_common_SOURCES = tests/check_common.c
tests_check_common_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_common_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_gguf
tests_check_gguf_SOURCES = tests/check_gguf.c tests/check_gguf_quant.c
tests_check_gguf_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_gguf_LDADD = $(CHECK_LDADD)

check_PROGRAMS += tests/check_model
tests_check_model_SOURCES = tests/check_model.c tools/mkmodel.c tools/mkmodel_vocab.c $(LC_MODEL_INTERIM)
tests_check_model_CFLAGS = $(CHECK_CFLAGS_ALL) -DLC_SRCDIR=\"$(abs_top_srcdir)\"
tests_check_model_LDADD = $(CHECK_LDADD)
endif
TESTS += $(check_PROGRAMS)
