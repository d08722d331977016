/* JSON text as chat templates print it. transformers' apply_chat_template
 * renders `x | tojson` with Python's json.dumps(x, ensure_ascii=False):
 * ", " and ": " separators, keys in their given order, non-ASCII as is,
 * integers as integers and floats as Python's repr (1.0, 1e-05, 1e+16).
 * Those details depend on the source text (1 and 1.0 differ), so these
 * functions work on raw JSON text rather than on a parsed tree. */
#ifndef LC_CHAT_JSON_H
#define LC_CHAT_JSON_H

#include <stddef.h>

/* Re-prints one JSON value (json[0..len), surrounding whitespace allowed)
 * the way json.dumps would after json.loads. *out is malloc'd and
 * NUL-terminated. Returns 0, LC_ENOMEM, or LC_EINVAL for text that is not
 * one JSON value, holds invalid UTF-8 or a lone surrogate escape, or an
 * object with a repeated key (Python keeps the last, cJSON the first: we
 * refuse rather than guess). */
int chat_json_render(const char *json, size_t len, char **out);

/* Raw text of the value of member key in the JSON object json[0..len):
 * *val, *vlen. Returns 0, LC_ENOTFOUND, or LC_EINVAL (not an object). */
int chat_json_member(const char *json, size_t len, const char *key, const char **val, size_t *vlen);

/* Raw text of element i of the JSON array json[0..len). Returns 0,
 * LC_ENOTFOUND (no such element), or LC_EINVAL (not an array). */
int chat_json_element(const char *json, size_t len, int i, const char **val, size_t *vlen);

/* Python's repr() of a double into buf (at least 32 bytes). */
void chat_json_float(double d, char *buf, size_t n);

#endif
