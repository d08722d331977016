# scheduler: request lifecycle, continuous batching, admission, preemption.
liblacuna_a_SOURCES += \
	src/scheduler/sched.h src/scheduler/sched_internal.h \
	src/scheduler/sched.c src/scheduler/step.c src/scheduler/output.c \
	src/scheduler/req.c src/scheduler/policy.c \
	src/scheduler/stop.c src/scheduler/stop.h

# The host work of a step after the forward pass (sampling, events,
# detokenizing), timed with synthetic logits (not run by make check):
# tests/bench_sample -h
noinst_PROGRAMS += tests/bench_sample
tests_bench_sample_SOURCES = tests/bench_sample.c
tests_bench_sample_LDADD = liblacuna.a $(LC_LIBS)
