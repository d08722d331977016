/* `lacuna inspect`: shows what a GGUF file holds, through the same validating
 * reader the daemon uses, so a file that inspects cleanly also loads (and a
 * bad one fails here with the loader's message). */
#include <stdio.h>
#include <string.h>

#include "model/gguf.h"
#include "tools/cmds.h"

int cmd_inspect(int argc, char **argv) {
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(argc == 2 ? stdout : stderr, "usage: lacuna inspect MODEL.gguf\n");
        return argc == 2 ? 0 : 2;
    }
    char err[512];
    gguf_ctx_t *g = gguf_open(argv[1], err, sizeof err);
    if (!g) {
        fprintf(stderr, "lacuna inspect: %s: %s\n", argv[1], err);
        return 1;
    }
    printf("file: %s\nGGUF version: %u\nfile size: %llu bytes\nalignment: %u\ndata offset: %llu\n\n", argv[1],
           gguf_version(g), (unsigned long long)gguf_file_size(g), gguf_alignment(g),
           (unsigned long long)gguf_data_offset(g));

    printf("metadata (%lld keys):\n", (long long)gguf_n_keys(g));
    for (int64_t i = 0; i < gguf_n_keys(g); i++) {
        char val[512];
        gguf_str_t k = gguf_key_name(g, i);
        gguf_format_value(g, i, val, sizeof val);
        printf("  %-40.*s %-7s %s\n", (int)k.len, k.ptr, gguf_vtype_name(gguf_key_type(g, i)), val);
    }

    printf("\ntensors (%lld):\n  %-32s %-5s %-24s %12s %12s\n", (long long)gguf_n_tensors(g), "name", "type", "dims",
           "bytes", "offset");
    uint64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        char dims[96];
        size_t o = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%llu", d ? " x " : "", (unsigned long long)t->dims[d]);
        printf("  %-32.*s %-5s %-24s %12llu %12llu\n", (int)t->name.len, t->name.ptr, ggml_type_name(t->type), dims,
               (unsigned long long)t->nbytes, (unsigned long long)t->offset);
        params += t->n_elements;
        bytes += t->nbytes;
    }
    printf("\nparameters: %llu (%.1fM), tensor data: %llu bytes\n", (unsigned long long)params, params / 1e6,
           (unsigned long long)bytes);
    gguf_close(g);
    return 0;
}
