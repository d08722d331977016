# Fuzz targets. `make check` replays every committed corpus and regression
# input through each target (gcc, and ASan+UBSan in the sanitizer build);
# `make fuzz` builds the libFuzzer binaries (needs CC=clang; scripts/fuzz.sh
# configures such a build and runs each target for a bounded time).
FUZZ_NAMES = gguf tokenizer chat request sse schema
EXTRA_DIST += tests/fuzz/corpus tests/fuzz/regressions

check_PROGRAMS += tests/fuzz/replay_gguf tests/fuzz/replay_tokenizer tests/fuzz/replay_chat \
	tests/fuzz/replay_request tests/fuzz/replay_sse tests/fuzz/replay_schema
tests_fuzz_replay_gguf_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_gguf.c
tests_fuzz_replay_gguf_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"gguf"'
tests_fuzz_replay_gguf_LDADD = liblacuna.a $(LC_LIBS)
tests_fuzz_replay_tokenizer_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_tokenizer.c
tests_fuzz_replay_tokenizer_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"tokenizer"'
tests_fuzz_replay_tokenizer_LDADD = liblacuna.a $(LC_LIBS)
tests_fuzz_replay_chat_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_chat.c
tests_fuzz_replay_chat_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"chat"'
tests_fuzz_replay_chat_LDADD = liblacuna.a $(LC_LIBS)
tests_fuzz_replay_request_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_request.c
tests_fuzz_replay_request_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"request"'
tests_fuzz_replay_request_LDADD = liblacuna.a $(LC_LIBS)
tests_fuzz_replay_sse_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_sse.c
tests_fuzz_replay_sse_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"sse"'
tests_fuzz_replay_sse_LDADD = liblacuna.a $(LC_LIBS)
tests_fuzz_replay_schema_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_schema.c
tests_fuzz_replay_schema_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_NAME='"schema"'
tests_fuzz_replay_schema_LDADD = liblacuna.a $(LC_LIBS)

FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
fuzz: liblacuna.a
	@for n in $(FUZZ_NAMES); do \
	  echo "  FUZZ     tests/fuzz/fuzz_$$n"; mkdir -p tests/fuzz; \
	  $(CC) $(DEFS) $(DEFAULT_INCLUDES) $(AM_CPPFLAGS) $(CPPFLAGS) $(FUZZ_FLAGS) \
	    -o tests/fuzz/fuzz_$$n $(srcdir)/tests/fuzz/fuzz_$$n.c liblacuna.a $(LC_LIBS) || exit 1; \
	done
.PHONY: fuzz
CLEANFILES += tests/fuzz/fuzz_gguf tests/fuzz/fuzz_tokenizer tests/fuzz/fuzz_chat tests/fuzz/fuzz_request \
	tests/fuzz/fuzz_sse tests/fuzz/fuzz_schema
