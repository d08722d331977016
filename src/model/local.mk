# model: GGUF reading/writing and weight (de)quantization; loading, the
# forward pass and sampling.
liblacuna_a_SOURCES += \
	src/model/gguf.c src/model/gguf.h src/model/gguf_internal.h \
	src/model/gguf_meta.c src/model/gguf_write.c \
	src/model/quant.c src/model/quant.h \
	src/model/model.h src/model/model_internal.h \
	src/model/model_load.c \
	src/model/forward.c \
	src/model/sampler.h src/model/sampler.c

# ---- tokenizer and chat templates ------------------------------------------
liblacuna_a_SOURCES += \
	src/model/tokenizer.c src/model/tokenizer.h src/model/tok_impl.h \
	src/model/chat.c src/model/chat.h src/model/chat_internal.h \
	src/model/chat_tools.c src/model/chat_json.c src/model/chat_json.h \
	src/model/tok_util.c src/model/tok_bpe.c src/model/tok_spm.c \
	src/model/tok_gguf.c

# ---- constrained decoding: grammars, JSON schemas ---------------------------
liblacuna_a_SOURCES += \
	src/model/grammar.c src/model/grammar.h src/model/gram_internal.h \
	src/model/gram_match.c \
	src/model/json_schema.c src/model/json_schema.h src/model/json_rules.c src/model/js_internal.h
