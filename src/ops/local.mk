# ops: non-attention compute (CPU through CBLAS).
liblacuna_a_SOURCES += \
	src/ops/ops.h \
	src/ops/cpu/matmul.c \
	src/ops/cpu/norm.c \
	src/ops/cpu/rope.c
