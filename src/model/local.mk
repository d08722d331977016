# model: GGUF reading/writing and weight (de)quantization; loading, the
# forward pass and sampling.
liblacuna_a_SOURCES += \
	src/model/gguf.c src/model/gguf.h src/model/gguf_internal.h \
	src/model/gguf_meta.c src/model/gguf_write.c \
	src/model/quant.c src/model/quant.h \
	src/model/model.h src/model/model_internal.h \
	src/model/model_load.c \
	src/model/forward.c src/model/forward_cp.c src/model/exec.c src/model/exec.h src/model/exec_cuda.h \
	src/model/sampler.h src/model/sampler.c

# ---- tokenizer and chat templates ------------------------------------------
liblacuna_a_SOURCES += \
	src/model/tokenizer.c src/model/tokenizer.h src/model/tok_impl.h \
	src/model/chat.c src/model/chat.h src/model/chat_internal.h \
	src/model/chat_tools.c src/model/chat_json.c src/model/chat_json.h \
	src/model/tok_util.c src/model/tok_bpe.c src/model/tok_spm.c \
	src/model/tok_gguf.c

# The CUDA executor (with CUDA only).
if HAVE_CUDA
liblacuna_a_SOURCES += src/model/exec_cuda.cu src/model/exec_cuda_step.cu src/model/exec_cuda_plan.cu src/model/exec_cuda_prof.cu src/model/exec_cuda_cp.cu src/model/exec_cuda_cp_make.cu src/model/exec_cuda_int.cuh src/model/exec_cuda_cp.cuh
CUDA_SRCS += src/model/exec_cuda.cu src/model/exec_cuda_step.cu src/model/exec_cuda_plan.cu src/model/exec_cuda_prof.cu src/model/exec_cuda_cp.cu src/model/exec_cuda_cp_make.cu
endif
EXTRA_DIST += src/model/exec_cuda.cu src/model/exec_cuda_step.cu src/model/exec_cuda_plan.cu src/model/exec_cuda_prof.cu src/model/exec_cuda_cp.cu src/model/exec_cuda_cp_make.cu src/model/exec_cuda_int.cuh src/model/exec_cuda_cp.cuh

# The GPU Check suite of the executor (tests/gpu/run.sh runs it on the GPU
# machine; not in make check). Check linked statically so the binary travels.
EXTRA_DIST += tests/gpu/check_cuda.c tests/gpu/check_cuda_cp.c tests/gpu/check_cuda_sched.c
if HAVE_CUDA
if HAVE_CHECK
noinst_PROGRAMS += tests/gpu/check_cuda
tests_gpu_check_cuda_SOURCES = tests/gpu/check_cuda.c tests/gpu/check_cuda_cp.c tests/gpu/check_cuda_sched.c tests/cp_exec_case.c tests/tinymodel.c \
	tools/mkmodel.c tools/mkmodel_vocab.c
tests_gpu_check_cuda_CFLAGS = $(CHECK_CFLAGS_ALL) -I$(top_srcdir)/tests
tests_gpu_check_cuda_LDADD = liblacuna.a -l:libcheck_pic.a -l:libsubunit.a $(LC_LIBS) -lrt -lm
endif
endif

# ---- constrained decoding: grammars, JSON schemas ---------------------------
liblacuna_a_SOURCES += \
	src/model/grammar.c src/model/grammar.h src/model/gram_internal.h \
	src/model/gram_match.c \
	src/model/json_schema.c src/model/json_schema.h src/model/json_rules.c src/model/js_internal.h
