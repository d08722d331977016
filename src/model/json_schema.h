/* JSON schema -> grammar (grammar.h), for response_format and tool calls.
 *
 * The subset is the one OpenAI's structured-outputs guide documents:
 * object (properties, required, additionalProperties), array (items,
 * minItems, maxItems), string, number, integer, boolean, null, enum, const,
 * anyOf, local $ref ("#", "#/$defs/x", any "#/..." pointer) and $defs /
 * definitions, a type list (["string", "null"]), and the annotations title,
 * description, default, examples, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly. Every other keyword (pattern, format, minimum,
 * oneOf, ...) is refused with a message naming it and where it is: a
 * constraint we would not enforce is never silently dropped.
 *
 * What the generated JSON looks like: properties come in the schema's order
 * (required ones always, optional ones may be left out); additional
 * properties are generated only for an object without "properties" (a
 * map); numbers have at most 16 integer and 16 fraction digits and a
 * 3-digit exponent; between tokens, at most one space, or a newline and up
 * to 20 spaces or tabs of indentation. These bounds keep a model from
 * looping forever inside one value.
 *
 * Limits (each failure is a message, never a crash): nesting 64 levels of
 * schema, 4096 enum values, 1024 properties per object, 256 anyOf
 * branches, minItems / the span maxItems - minItems at most 256, and the
 * grammar limits of gram_limits_t. A $ref cycle that consumes no input is
 * refused; one that does (a tree) is fine. */
#ifndef LC_JSON_SCHEMA_H
#define LC_JSON_SCHEMA_H

#include <stddef.h>

#include "model/grammar.h"

struct cJSON;

typedef struct js_ctx js_ctx_t;

/* A compiler writing into b (which must outlive it). NULL on OOM. */
js_ctx_t *js_ctx_create(gram_builder_t *b);
void js_ctx_destroy(js_ctx_t *c);
/* The rule of a value valid under schema (whose document is also the root
 * for "#" references). where prefixes locations in messages (e.g.
 * "tools[0].function.parameters"). Returns the rule id, or a negative status
 * with a sentence in err (LC_EINVAL: unsupported or invalid schema;
 * LC_ETOOLONG: over a limit; LC_ENOMEM). */
int js_schema_rule(js_ctx_t *c, const struct cJSON *schema, const char *where, char *err, size_t errlen);
/* The rule of any JSON object (JSON mode), or a negative status. */
int js_any_object_rule(js_ctx_t *c);

/* Whole grammars: a value of the schema, or any JSON object. NULL with a
 * status and a message on failure. */
gram_t *js_compile_schema(const struct cJSON *schema, const char *where, int *status, char *err, size_t errlen);
gram_t *js_compile_any_object(int *status, char *err, size_t errlen);

#endif
