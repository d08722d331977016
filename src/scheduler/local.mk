# scheduler: request lifecycle, continuous batching, admission, preemption.
liblacuna_a_SOURCES += \
	src/scheduler/sched.h src/scheduler/sched_internal.h \
	src/scheduler/sched.c src/scheduler/step.c src/scheduler/output.c \
	src/scheduler/req.c src/scheduler/policy.c \
	src/scheduler/stop.c src/scheduler/stop.h
