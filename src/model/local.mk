# model: GGUF reading/writing and weight (de)quantization.
liblacuna_a_SOURCES += \
	src/model/gguf.c src/model/gguf.h src/model/gguf_internal.h \
	src/model/gguf_meta.c src/model/gguf_write.c \
	src/model/quant.c src/model/quant.h
