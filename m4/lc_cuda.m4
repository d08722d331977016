# LC_CHECK_CUDA: optional CUDA toolkit (and NCCL) for the GPU path.
# --with-cuda[=DIR]  (default: check /usr/local/cuda); --without-cuda disables.
# Sets CUDA_HOME, NVCC, NVCC_GENCODE (overridable), CUDA_LIBS, NCCL_LIBS and
# the HAVE_CUDA / HAVE_NCCL conditionals and defines.
AC_DEFUN([LC_CHECK_CUDA], [
  AC_ARG_WITH([cuda],
    [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@], [build the CUDA path (default: auto, /usr/local/cuda)])],
    [], [with_cuda=check])
  AC_ARG_VAR([NVCC_GENCODE], [nvcc -gencode flags (default: sm_90a plus PTX)])
  have_cuda=no
  have_nccl=no
  CUDA_HOME=
  AS_CASE([$with_cuda],
    [no], [],
    [yes|check], [CUDA_HOME=/usr/local/cuda],
    [CUDA_HOME=$with_cuda])
  AS_IF([test -n "$CUDA_HOME"], [
    AS_IF([test -x "$CUDA_HOME/bin/nvcc" && test -f "$CUDA_HOME/include/cuda_runtime.h"],
      [have_cuda=yes
       NVCC="$CUDA_HOME/bin/nvcc"
       CUDA_CFLAGS="-I$CUDA_HOME/include"
       CUDA_LIBDIR="$CUDA_HOME/lib64"
       AS_IF([test -d "$CUDA_HOME/targets/x86_64-linux/lib"], [CUDA_LIBDIR="$CUDA_HOME/targets/x86_64-linux/lib"])
       CUDA_LIBS="-L$CUDA_LIBDIR -lcudart_static -lrt -ldl -lpthread -lstdc++"
       AS_IF([test -z "$NVCC_GENCODE"],
         [NVCC_GENCODE="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"])
       AS_IF([test -f "$CUDA_HOME/include/nccl.h" || test -f /usr/include/nccl.h],
         [have_nccl=yes; AC_DEFINE([HAVE_NCCL], [1], [NCCL headers present])])
       AC_DEFINE([HAVE_CUDA], [1], [CUDA path compiled in])],
      [AS_IF([test "x$with_cuda" != xcheck], [AC_MSG_ERROR([CUDA requested but no nvcc under $CUDA_HOME])])
       CUDA_HOME=])
  ])
  AC_SUBST([NVCC])
  AC_SUBST([CUDA_HOME])
  AC_SUBST([CUDA_CFLAGS])
  AC_SUBST([CUDA_LIBS])
  AM_CONDITIONAL([HAVE_CUDA], [test "x$have_cuda" = xyes])
  AM_CONDITIONAL([HAVE_NCCL], [test "x$have_nccl" = xyes])
])
