# LC_CHECK_BLAS: find a CBLAS (OpenBLAS preferred) and set BLAS_CFLAGS/BLAS_LIBS.
AC_DEFUN([LC_CHECK_BLAS], [
  PKG_CHECK_MODULES([BLAS], [openblas], [have_blas=yes], [have_blas=no])
  AS_IF([test "x$have_blas" = xno], [
    PKG_CHECK_MODULES([BLAS], [cblas], [have_blas=yes], [have_blas=no])])
  AS_IF([test "x$have_blas" = xno], [
    AC_CHECK_LIB([openblas], [cblas_sgemm], [BLAS_LIBS="-lopenblas"; have_blas=yes])])
  AS_IF([test "x$have_blas" = xno], [AC_MSG_ERROR([a CBLAS library is required (apt install libopenblas-dev)])])
  save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS $BLAS_CFLAGS"
  AC_CHECK_HEADERS([cblas.h], [], [AC_MSG_ERROR([cblas.h not found])])
  CFLAGS=$save_CFLAGS
])
