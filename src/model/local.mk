# model: file list for the non-recursive build (see Makefile.am).

# ---- tokenizer and chat templates ------------------------------------------
liblacuna_a_SOURCES += \
	src/model/tokenizer.c src/model/tokenizer.h src/model/tok_impl.h \
	src/model/chat.c src/model/chat.h \
	src/model/tok_util.c src/model/tok_bpe.c src/model/tok_spm.c \
	src/model/tok_gguf.c
