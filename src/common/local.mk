# common: status codes, logging, clocks, config.
liblacuna_a_SOURCES += \
	src/common/status.c src/common/status.h \
	src/common/log.c src/common/log.h \
	src/common/timeutil.c src/common/timeutil.h \
	src/common/hist.c src/common/hist.h \
	src/common/cpu.c src/common/cpu.h \
	src/common/f16.h \
	src/common/mem.c src/common/mem.h \
	src/common/buf.c src/common/buf.h
liblacuna_a_SOURCES += src/common/config.c src/common/config.h
