# LC_CHECK_BLAS: find a CBLAS and set BLAS_CFLAGS/BLAS_LIBS.
# Prefers Debian's OpenMP build of OpenBLAS (libopenblas-openmp-dev): our own
# kernels use OpenMP, and a pthread OpenBLAS beside an OpenMP runtime makes two
# thread pools spin against each other (measured: decode 1.4 vs 9.4 tok/s on 2
# cores). Linked with an rpath so the alternatives symlink cannot swap it.
AC_DEFUN([LC_CHECK_BLAS], [
  AC_ARG_WITH([blas-dir],
    [AS_HELP_STRING([--with-blas-dir=DIR], [directory holding libopenblas.so to link (default: Debian's openblas-openmp)])],
    [], [with_blas_dir=auto])
  have_blas=no
  multiarch=`$CC -print-multiarch 2>/dev/null`
  AS_IF([test "x$with_blas_dir" = xauto],
    [with_blas_dir=/usr/lib/$multiarch/openblas-openmp])
  AS_IF([test -f "$with_blas_dir/libopenblas.so"], [
    BLAS_LIBS="-L$with_blas_dir -Wl,-rpath,$with_blas_dir -lopenblas"
    BLAS_CFLAGS=`$PKG_CONFIG --cflags openblas 2>/dev/null`
    have_blas=yes
    AC_MSG_NOTICE([using OpenBLAS from $with_blas_dir])])
  AS_IF([test "x$have_blas" = xno], [
    PKG_CHECK_MODULES([BLAS], [openblas], [have_blas=yes], [have_blas=no])])
  AS_IF([test "x$have_blas" = xno], [
    PKG_CHECK_MODULES([BLAS], [cblas], [have_blas=yes], [have_blas=no])])
  AS_IF([test "x$have_blas" = xno], [AC_MSG_ERROR([a CBLAS library is required (apt install libopenblas-openmp-dev)])])
  AC_SUBST([BLAS_LIBS])
  AC_SUBST([BLAS_CFLAGS])
  save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS $BLAS_CFLAGS"
  AC_CHECK_HEADERS([cblas.h], [], [AC_MSG_ERROR([cblas.h not found])])
  CFLAGS=$save_CFLAGS
])
