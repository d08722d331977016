# model: file list for the non-recursive build (see Makefile.am).
