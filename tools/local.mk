# tools: the lacuna CLI.
bin_PROGRAMS += lacuna
lacuna_SOURCES = tools/lacuna.c tools/inspect.c tools/cmds.h
lacuna_LDADD = liblacuna.a $(LC_LIBS)
