/* libFuzzer target: the GGUF loader over arbitrary bytes. Every input must be
 * either refused with a message or load into a context whose metadata and
 * tensors can all be walked without reading outside the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    gguf_ctx_t *g = gguf_open_buffer(data, size, err, sizeof err);
    if (!g) {
        if (!err[0]) __builtin_trap(); // a refusal must say why
        return 0;
    }
    char buf[256];
    for (int64_t i = 0; i < gguf_n_keys(g); i++) gguf_format_value(g, i, buf, sizeof buf);
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    (void)sink;
    gguf_close(g);
    return 0;
}
