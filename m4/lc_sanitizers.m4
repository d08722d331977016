# LC_ENABLE_SANITIZERS: --enable-sanitizers builds everything with ASan + UBSan
# (plus float-cast-overflow, which GCC leaves out of -fsanitize=undefined);
# any report aborts the program.
AC_DEFUN([LC_ENABLE_SANITIZERS], [
  AC_ARG_ENABLE([sanitizers],
    [AS_HELP_STRING([--enable-sanitizers], [build with AddressSanitizer and UndefinedBehaviorSanitizer])],
    [], [enable_sanitizers=no])
  SAN_CFLAGS=
  SAN_LDFLAGS=
  AS_IF([test "x$enable_sanitizers" = xyes], [
    SAN_CFLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all"
    SAN_LDFLAGS="-fsanitize=address,undefined,float-cast-overflow"])
  AC_SUBST([SAN_CFLAGS])
  AC_SUBST([SAN_LDFLAGS])
  AM_CONDITIONAL([SANITIZERS], [test "x$enable_sanitizers" = xyes])
])
