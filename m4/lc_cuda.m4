# LC_CHECK_CUDA: optional CUDA toolkit (and NCCL) for the GPU path.
# --with-cuda[=DIR]  (default: check /usr/local/cuda); --without-cuda disables.
# Sets CUDA_HOME, NVCC, NVCC_GENCODE (overridable), CUDA_CFLAGS, CUDA_LIBS,
# NCCL_CFLAGS, NCCL_LIBS, and the HAVE_CUDA / HAVE_NCCL conditionals and
# defines. NCCL_LIBS is on every link line (Makefile.am's LC_LIBS) inside
# --as-needed: only a program that calls the NCCL communicator
# (src/attn/cp/comm_nccl.cu) records libnccl, so lacunad and the other GPU
# binaries still start on a machine without it.

# LC_CHECK_NCCL (inside LC_CHECK_CUDA, once the toolkit is found).
# --with-nccl[=DIR] (default: check); --without-nccl builds without it.
# NCCL is taken only when nccl.h is found and a program calling
# ncclGetVersion links against -lnccl, searched in DIR/lib and DIR/lib64 when
# given, else in the toolkit's lib directories and then the system's. Sets
# NCCL_CFLAGS, NCCL_LIBS (with an rpath to the directory it was found in,
# inside --as-needed),
# have_nccl and HAVE_NCCL. Without NCCL both stay empty and the build goes
# on, unless --with-nccl asked for it.
AC_DEFUN([LC_CHECK_NCCL], [
  NCCL_CFLAGS=
  NCCL_LIBS=
  AS_CASE([$with_nccl],
    [no], [nccl_dirs=],
    [yes|check], [nccl_dirs="$CUDA_HOME/lib $CUDA_LIBDIR $CUDA_HOME/lib64 system"],
    [NCCL_CFLAGS="-I$with_nccl/include"; nccl_dirs="$with_nccl/lib $with_nccl/lib64"])
  AS_IF([test -n "$nccl_dirs"], [
    AC_MSG_CHECKING([for NCCL])
    save_CPPFLAGS=$CPPFLAGS; save_LIBS=$LIBS
    CPPFLAGS="$CPPFLAGS $CUDA_CFLAGS $NCCL_CFLAGS"
    for nccl_dir in $nccl_dirs; do
      AS_IF([test "x$nccl_dir" = xsystem], [nccl_try="-lnccl"],
        [test -d "$nccl_dir"], [nccl_try="-L$nccl_dir -Wl,-rpath,$nccl_dir -lnccl"],
        [continue])
      LIBS="$nccl_try $save_LIBS"
      AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]], [[int v = 0; return ncclGetVersion(&v) != ncclSuccess;]])],
        [have_nccl=yes; NCCL_LIBS="-Wl,--push-state,--as-needed $nccl_try -Wl,--pop-state"; break])
    done
    CPPFLAGS=$save_CPPFLAGS; LIBS=$save_LIBS
    AS_IF([test "x$have_nccl" = xyes],
      [AC_DEFINE([HAVE_NCCL], [1], [NCCL found: nccl.h and a program linked with NCCL_LIBS])
       AC_MSG_RESULT([$NCCL_LIBS])],
      [AC_MSG_RESULT([no])
       NCCL_CFLAGS=
       AS_IF([test "x$with_nccl" != xcheck], [AC_MSG_ERROR([NCCL requested but nccl.h and -lnccl do not link])])])
  ])
])
AC_DEFUN([LC_CHECK_CUDA], [
  AC_ARG_WITH([cuda],
    [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@], [build the CUDA path (default: auto, /usr/local/cuda)])],
    [], [with_cuda=check])
  AC_ARG_WITH([nccl],
    [AS_HELP_STRING([--with-nccl@<:@=DIR@:>@], [use NCCL with CUDA (default: auto)])],
    [], [with_nccl=check])
  AC_ARG_VAR([NVCC_GENCODE], [nvcc -gencode flags (default: sm_90a plus PTX)])
  have_cuda=no
  have_nccl=no
  CUDA_HOME=
  dnl The toolkit: --with-cuda=DIR, else /usr/local/cuda, else the nvcc on PATH.
  AS_CASE([$with_cuda],
    [no], [],
    [yes|check], [AS_IF([test -x /usr/local/cuda/bin/nvcc], [CUDA_HOME=/usr/local/cuda],
                    [AC_PATH_PROG([lc_nvcc_path], [nvcc])
                     AS_IF([test -n "$lc_nvcc_path"], [CUDA_HOME=`dirname "$lc_nvcc_path"`; CUDA_HOME=`dirname "$CUDA_HOME"`])])],
    [CUDA_HOME=$with_cuda])
  AS_IF([test -n "$CUDA_HOME"], [
    AS_IF([test -x "$CUDA_HOME/bin/nvcc" && test -f "$CUDA_HOME/include/cuda_runtime.h"],
      [have_cuda=yes
       NVCC="$CUDA_HOME/bin/nvcc"
       CUDA_CFLAGS="-I$CUDA_HOME/include"
       CUDA_LIBDIR="$CUDA_HOME/lib64"
       AS_IF([test -d "$CUDA_HOME/targets/x86_64-linux/lib"], [CUDA_LIBDIR="$CUDA_HOME/targets/x86_64-linux/lib"])
       dnl cuBLAS(Lt) ships as shared libraries only: an rpath finds them at run time.
       CUDA_LIBS="-L$CUDA_LIBDIR -lcublasLt -lcublas -lcudart_static -lrt -ldl -lpthread -lstdc++ -Wl,-rpath,$CUDA_LIBDIR"
       AS_IF([test -z "$NVCC_GENCODE"],
         [NVCC_GENCODE="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"])
       AC_MSG_CHECKING([whether a program links the CUDA runtime and cuBLASLt])
       lc_save_CPPFLAGS=$CPPFLAGS lc_save_LIBS=$LIBS
       CPPFLAGS="$CPPFLAGS $CUDA_CFLAGS" LIBS="$CUDA_LIBS $LIBS"
       AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cuda_runtime.h>
#include <cublasLt.h>]], [[int n = 0; cublasLtHandle_t h; cudaGetDeviceCount(&n); return cublasLtCreate(&h) + n;]])],
         [AC_MSG_RESULT([yes])],
         [AC_MSG_RESULT([no])
          AS_IF([test "x$with_cuda" != xcheck], [AC_MSG_ERROR([CUDA requested but a program using it does not link ($CUDA_LIBS)])])
          have_cuda=no])
       CPPFLAGS=$lc_save_CPPFLAGS LIBS=$lc_save_LIBS
       AS_IF([test "x$have_cuda" = xyes], [AC_DEFINE([HAVE_CUDA], [1], [CUDA path compiled in])
         LC_CHECK_NCCL], [CUDA_HOME= CUDA_CFLAGS= CUDA_LIBS=])],
      [AS_IF([test "x$with_cuda" != xcheck], [AC_MSG_ERROR([CUDA requested but no nvcc under $CUDA_HOME])])
       CUDA_HOME=])
  ])
  AC_SUBST([NVCC])
  AC_SUBST([CUDA_HOME])
  AC_SUBST([CUDA_CFLAGS])
  AC_SUBST([CUDA_LIBS])
  AC_SUBST([NCCL_CFLAGS])
  AC_SUBST([NCCL_LIBS])
  AM_CONDITIONAL([HAVE_CUDA], [test "x$have_cuda" = xyes])
  AM_CONDITIONAL([HAVE_NCCL], [test "x$have_nccl" = xyes])
])
