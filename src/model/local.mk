# model: file list for the non-recursive build (see Makefile.am).
liblacuna_a_SOURCES += \
	src/model/model.h src/model/model_internal.h \
	src/model/model_load.c \
	src/model/forward.c \
	src/model/sampler.h src/model/sampler.c
# INTERIM (until attn and engine are merged): private dense attention and KV
# pool for the model's own tests and tools; never part of liblacuna.
LC_MODEL_INTERIM = src/model/interim/attn_fallback.c src/model/interim/kv_fallback.c
EXTRA_DIST += $(LC_MODEL_INTERIM)
