/* Replays fuzz inputs through a fuzz target's entry point without libFuzzer:
 * every file of the committed corpora and of tests/fuzz/regressions/ (each
 * crash a fuzzer ever found) runs on every `make check`, under the sanitizer
 * build too. Usage: replay [DIR...]; with no argument it replays
 * $LACUNA_SRCDIR/tests/fuzz/{corpus,regressions}/FUZZ_NAME. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (!r) break;
        len += r;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf ? buf : (const uint8_t *)"", len);
    free(buf);
    return 1;
}

int main(int argc, char **argv) {
    int n = 0;
    char defaults[2][4096];
    char *default_argv[3] = {argv[0], defaults[0], defaults[1]};
    if (argc == 1) {
        const char *src = getenv("LACUNA_SRCDIR");
        if (!src) src = ".";
        snprintf(defaults[0], sizeof defaults[0], "%s/tests/fuzz/corpus/%s", src, FUZZ_NAME);
        snprintf(defaults[1], sizeof defaults[1], "%s/tests/fuzz/regressions/%s", src, FUZZ_NAME);
        argc = 3;
        argv = default_argv;
    }
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            n += run_file(path);
        }
        closedir(d);
    }
    printf("replayed %d inputs\n", n);
    return n > 0 ? 0 : 1;
}
