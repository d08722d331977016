# server: the OpenAI-compatible HTTP front end (see Makefile.am).
liblacuna_a_SOURCES += \
	src/server/parse.c src/server/parse.h src/server/parse_format.c \
	src/server/respond.c src/server/respond.h \
	src/server/toolcall.c src/server/toolcall.h \
	src/server/metrics.c src/server/metrics.h \
	src/server/auth.c src/server/auth.h \
	src/server/server.h src/server/http.c src/server/routes.c src/server/gen.c \
	src/server/daemon.c

if HAVE_CHECK
check_PROGRAMS += tests/check_server
tests_check_server_SOURCES = tests/check_server.c
tests_check_server_CFLAGS = $(CHECK_CFLAGS_ALL)
tests_check_server_LDADD = $(CHECK_LDADD)
endif

# Integration tests: pytest against a running lacunad (tests/integration).
TESTS += tests/integration/run.sh
EXTRA_DIST += tests/integration/run.sh tests/integration/conftest.py tests/integration/test_api.py \
	tests/integration/test_malformed.py tests/integration/test_ops.py tests/integration/test_limits.py \
	tests/integration/test_soak.py tests/integration/test_cli.py tests/integration/test_kv_limits.py \
	bench/soak.sh bench/soak.py bench/structured.sh bench/structured_client.py

# The daemon: main() only; everything it runs is in the library.
bin_PROGRAMS += lacunad
lacunad_SOURCES = src/server/main.c
lacunad_LDADD = liblacuna.a $(LC_LIBS)
