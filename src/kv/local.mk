# kv: paged KV block pool, block tables, prefix cache, key summaries.
liblacuna_a_SOURCES += \
	src/kv/kv.h src/kv/kv_internal.h \
	src/kv/pool.c src/kv/seq.c src/kv/prefix.c \
	src/kv/store.c src/kv/store.h
