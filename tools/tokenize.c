/* `lacuna tokenize`: shows how the model's tokenizer splits a text, the quick
 * way to check a prompt's token count or a special token's id by hand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tools/cmds.h"

static void usage(FILE *f) {
    fprintf(f, "usage: lacuna tokenize -m MODEL.gguf [-p TEXT | -f FILE] [--no-special] [--ids-only]\n"
               "  -p TEXT        text to tokenize (default: read standard input)\n"
               "  -f FILE        read the text from FILE\n"
               "  --no-special   treat control tokens written in the text as plain text\n"
               "  --ids-only     print only the ids, space-separated on one line\n");
}

/* Reads a whole stream; NULL on error or OOM. */
static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf || ferror(f)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* Piece bytes with controls and non-UTF-8 bytes escaped, so that a token
 * holding half a character or a newline stays on its line. */
static void print_piece(const char *p, size_t n) {
    putchar('\'');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\' || c == '\'')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else if (c >= 0x80) {
            /* Print whole valid characters; escape stray bytes. */
            size_t k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0, j = 1;
            while (k && j < k && i + j < n && ((unsigned char)p[i + j] & 0xC0) == 0x80) j++;
            if (k && j == k) {
                fwrite(p + i, 1, k, stdout);
                i += k - 1;
            } else {
                printf("\\x%02x", c);
            }
        } else
            putchar(c);
    }
    putchar('\'');
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL;
    int special = 1, ids_only = 0, rc = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-m") == 0 && i + 1 < argc)
            model = argv[++i];
        else if (strcmp(a, "-p") == 0 && i + 1 < argc)
            text = argv[++i];
        else if (strcmp(a, "-f") == 0 && i + 1 < argc)
            file = argv[++i];
        else if (strcmp(a, "--no-special") == 0)
            special = 0;
        else if (strcmp(a, "--ids-only") == 0)
            ids_only = 1;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "lacuna tokenize: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || (text && file)) {
        usage(stderr);
        return 2;
    }

    char err[512] = "", *buf = NULL;
    gguf_ctx_t *g = NULL;
    tok_t *t = NULL;
    tok_ids_t ids = {0};
    size_t len = 0;
    if (text) {
        len = strlen(text);
    } else {
        FILE *f = file ? fopen(file, "rb") : stdin;
        if (!f) {
            perror(file);
            goto fail;
        }
        buf = read_all(f, &len);
        if (f != stdin) fclose(f);
        if (!buf) {
            fprintf(stderr, "lacuna tokenize: cannot read %s\n", file ? file : "standard input");
            goto fail;
        }
        text = buf;
    }
    if (!(g = gguf_open(model, err, sizeof(err)))) {
        fprintf(stderr, "lacuna tokenize: %s: %s\n", model, err);
        goto fail;
    }
    if (!(t = tok_create_from_gguf(g, err, sizeof(err)))) {
        fprintf(stderr, "lacuna tokenize: %s: %s\n", model, err);
        goto fail;
    }
    int st = tok_encode(t, text, len, tok_add_bos(t), special, &ids);
    if (st) {
        fprintf(stderr, "lacuna tokenize: %s\n", lc_strerror(st));
        goto fail;
    }
    for (size_t i = 0; i < ids.n; i++) {
        if (ids_only) {
            printf(i ? " %d" : "%d", ids.ids[i]);
            continue;
        }
        size_t n;
        const char *p = tok_piece(t, ids.ids[i], &n);
        printf("%6d ", ids.ids[i]);
        print_piece(p, n);
        putchar('\n');
    }
    if (ids_only)
        putchar('\n');
    else
        printf("%zu tokens\n", ids.n);
    rc = 0;
fail:
    tok_ids_free(&ids);
    tok_destroy(t);
    if (g) gguf_close(g);
    free(buf);
    return rc;
}
