/* Settings table, INI loading and flag parsing for lacunad. The table below
 * is the single list of settings; docs/configuration.md and
 * conf/lacuna.conf describe the same entries. */
#include "common/config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/status.h"

/* ---- the table ------------------------------------------------------------ */
typedef enum { T_STR, T_INT, T_I64, T_BOOL, T_DBL } ctype_t;

typedef struct {
    const char *section, *key;
    ctype_t type;
    size_t off;
    size_t size; // strings: buffer size
    double lo, hi;
    const char *choices; // strings: "a|b|c" or NULL
} centry_t;

#define OFF(f) offsetof(lc_config_t, f)
#define S(sec, k, f, ch)                                                                                               \
    { sec, k, T_STR, OFF(f), sizeof(((lc_config_t *)0)->f), 0, 0, ch }
#define I(sec, k, f, lo, hi)                                                                                           \
    { sec, k, T_INT, OFF(f), 0, lo, hi, NULL }
#define L(sec, k, f, lo, hi)                                                                                           \
    { sec, k, T_I64, OFF(f), 0, lo, hi, NULL }
#define B(sec, k, f)                                                                                                   \
    { sec, k, T_BOOL, OFF(f), 0, 0, 1, NULL }
#define D(sec, k, f, lo, hi)                                                                                           \
    { sec, k, T_DBL, OFF(f), 0, lo, hi, NULL }

static const centry_t table[] = {
    S("server", "host", host, NULL),
    I("server", "port", port, 0, 65535),
    B("server", "reuse_port", reuse_port),
    S("server", "api_keys", api_keys, NULL),
    S("server", "api_key_file", api_key_file, NULL),
    B("server", "auth_metrics", auth_metrics),
    L("server", "max_body_bytes", max_body_bytes, 1024, 1LL << 32),
    I("server", "max_connections", max_connections, 1, 1000000),
    I("server", "max_connections_per_ip", max_connections_per_ip, 0, 1000000),
    I("server", "connection_timeout_s", connection_timeout_s, 1, 86400),
    I("server", "request_deadline_s", request_deadline_s, 1, 86400),
    I("server", "keepalive_ping_s", keepalive_ping_s, 1, 3600),
    I("server", "drain_timeout_s", drain_timeout_s, 0, 86400),
    I("server", "max_n", max_n, 1, 128),
    I("server", "max_prompts", max_prompts, 1, 4096),
    I("server", "max_waiting", max_waiting, 1, 1000000),
    S("server", "log_level", log_level, "error|warn|info|debug"),
    S("model", "path", model_path, NULL),
    S("model", "served_name", served_name, NULL),
    S("model", "device", device, NULL),
    I("model", "threads", threads, 0, 1024),
    I("engine", "block_size", block_size, 0, 4096),
    L("engine", "kv_blocks", kv_blocks, 0, 1LL << 40),
    L("engine", "kv_bytes", kv_bytes, 0, 1LL << 50),
    I("engine", "max_batch_tokens", max_batch_tokens, 0, 1 << 24),
    I("engine", "max_running", max_running, 0, 1 << 20),
    I("engine", "prefill_chunk", prefill_chunk, 0, 1 << 24),
    I("engine", "target_step_ms", target_step_ms, -1, 1000000),
    D("engine", "kv_gpu_fraction", kv_gpu_fraction, 0.01, 0.99),
    D("engine", "kv_watermark", kv_watermark, 0, 0.5),
    B("engine", "prefix_cache", prefix_cache),
    B("engine", "kv_keep_sliding", kv_keep_sliding),
    B("engine", "deterministic", deterministic),
    B("engine", "cuda_graphs", cuda_graphs),
    S("attention", "prefill", prefill_method, "dense|flexprefill|anchor|streaming"),
    S("attention", "decode", decode_method, "dense|quest|tidal|streaming"),
    D("attention", "gamma", gamma, 0.0001, 1),
    D("attention", "tau", tau, 0, 1),
    D("attention", "theta", theta, 0, 1000),
    I("attention", "anchor_init", anchor_init, 0, 1 << 24),
    I("attention", "anchor_local", anchor_local, 1, 1 << 24),
    I("attention", "anchor_lookback", anchor_lookback, 0, 1 << 24),
    D("attention", "anchor_probe", anchor_probe, 0, 1),
    I("attention", "min_budget", min_budget, 1, 1 << 24),
    S("attention", "flex_select", flex_select, "tokens|blocks"),
    I("attention", "decode_budget", decode_budget, 1, 1 << 24),
    I("attention", "sparse_prefill_min_tokens", sparse_prefill_min_tokens, 0, 1 << 30),
    I("attention", "sparse_decode_min_tokens", sparse_decode_min_tokens, 0, 1 << 30),
    I("parallel", "context", context, 1, 64),
    L("parallel", "context_min_tokens", context_min_tokens, 1, 1LL << 40),
    S("parallel", "devices", context_devices, NULL),
};
#define N_TABLE ((int)(sizeof(table) / sizeof(table[0])))

void lc_config_default(lc_config_t *c) {
    memset(c, 0, sizeof(*c));
    snprintf(c->host, sizeof(c->host), "127.0.0.1");
    c->port = 8080;
    c->max_body_bytes = 8LL << 20;
    c->max_connections = 1000;
    c->max_connections_per_ip = 0;
    c->connection_timeout_s = 60;
    c->request_deadline_s = 30;
    c->keepalive_ping_s = 5;
    c->drain_timeout_s = 30;
    c->max_n = 16;
    c->max_prompts = 64;
    c->max_waiting = 256;
    snprintf(c->log_level, sizeof(c->log_level), "info");
    snprintf(c->device, sizeof(c->device), "auto");
    c->block_size = 0;
    c->target_step_ms = 0;
    c->kv_gpu_fraction = 0.85;
    c->deterministic = 1;
    c->cuda_graphs = 1;
    c->kv_blocks = 0;
    c->kv_bytes = 1LL << 30; // SmolLM2 at f32: ~46 KB a token, so ~23K tokens, 2.8 full contexts
    c->max_batch_tokens = 0; // 0: the device's default (scheduler/sched.c)
    c->max_running = 0;
    c->prefill_chunk = 0;
    c->kv_watermark = 0.01;
    c->prefix_cache = 1;
    snprintf(c->prefill_method, sizeof(c->prefill_method), "flexprefill");
    snprintf(c->decode_method, sizeof(c->decode_method), "quest");
    c->gamma = 0.9;
    c->tau = 0.1;
    c->theta = 12.0;
    c->anchor_init = 2048;
    c->anchor_local = 2048;
    c->anchor_lookback = 1024;
    c->anchor_probe = 0.01;
    c->min_budget = 1024;
    snprintf(c->flex_select, sizeof(c->flex_select), "tokens");
    c->decode_budget = 2048;
    c->sparse_prefill_min_tokens = 16384;
    c->sparse_decode_min_tokens = 8192;
    c->context = 1;
    c->context_min_tokens = 32768;
}

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int parse_bool(const char *v, int *out) {
    if (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off")) {
        *out = 0;
        return 0;
    }
    return LC_EINVAL;
}

static int choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

int lc_config_set(lc_config_t *c, const char *section, const char *key, const char *value, char *err, size_t errlen) {
    const centry_t *e = NULL;
    for (int i = 0; i < N_TABLE; i++)
        if (!strcmp(table[i].section, section) && !strcmp(table[i].key, key)) e = &table[i];
    if (!e) {
        errf(err, errlen, "unknown setting [%s] %s", section, key);
        return LC_ENOTFOUND;
    }
    char *base = (char *)c + e->off;
    char *end = NULL;
    switch (e->type) {
    case T_STR:
        if (strlen(value) >= e->size) {
            errf(err, errlen, "[%s] %s: value too long", section, key);
            return LC_EINVAL;
        }
        if (e->choices && !choice_ok(e->choices, value)) {
            errf(err, errlen, "[%s] %s: '%s' is not one of %s", section, key, value, e->choices);
            return LC_EINVAL;
        }
        memcpy(base, value, strlen(value) + 1);
        return 0;
    case T_BOOL: {
        int b;
        if (parse_bool(value, &b)) {
            errf(err, errlen, "[%s] %s: '%s' is not a boolean", section, key, value);
            return LC_EINVAL;
        }
        *(int *)base = b;
        return 0;
    }
    case T_INT:
    case T_I64: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end) {
            errf(err, errlen, "[%s] %s: '%s' is not an integer", section, key, value);
            return LC_EINVAL;
        }
        if ((double)v < e->lo || (double)v > e->hi) {
            errf(err, errlen, "[%s] %s: %lld is out of range [%.0f, %.0f]", section, key, v, e->lo, e->hi);
            return LC_EINVAL;
        }
        if (e->type == T_INT)
            *(int *)base = (int)v;
        else
            *(long long *)base = v;
        return 0;
    }
    case T_DBL: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v)) {
            errf(err, errlen, "[%s] %s: '%s' is not a number", section, key, value);
            return LC_EINVAL;
        }
        if (v < e->lo || v > e->hi) {
            errf(err, errlen, "[%s] %s: %g is out of range [%g, %g]", section, key, v, e->lo, e->hi);
            return LC_EINVAL;
        }
        *(double *)base = v;
        return 0;
    }
    }
    return LC_EINVAL;
}

/* ---- INI -------------------------------------------------------------------- */
typedef struct {
    lc_config_t *c;
    char *err;
    size_t errlen;
    int status;
} ini_ctx_t;

static int ini_cb(void *user, const char *section, const char *name, const char *value) {
    ini_ctx_t *x = user;
    if (x->status) return 0;
    char e[256];
    int rc = lc_config_set(x->c, section, name, value, e, sizeof(e));
    if (rc) {
        x->status = rc;
        errf(x->err, x->errlen, "%s: %s", x->c->config_path, e);
        return 0;
    }
    return 1;
}

int lc_config_load_file(lc_config_t *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        errf(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
        return LC_EIO;
    }
    snprintf(c->config_path, sizeof(c->config_path), "%s", path);
    ini_ctx_t x = {c, err, errlen, 0};
    int line = ini_parse_file(f, ini_cb, &x);
    fclose(f);
    if (x.status) return x.status < 0 ? x.status : LC_EINVAL;
    if (line != 0) {
        errf(err, errlen, "%s: syntax error on line %d", path, line);
        return LC_EFORMAT;
    }
    return 0;
}

int lc_config_validate(const lc_config_t *c, char *err, size_t errlen) {
    if (!c->host[0]) {
        errf(err, errlen, "[server] host must not be empty");
        return LC_EINVAL;
    }
    int cuda_index;
    if (lc_device_spec_parse(c->device, &cuda_index)) {
        errf(err, errlen, "[model] device: '%s' is not auto, cpu, cuda or cuda:N (N from 0 to %d)", c->device,
             LC_DEVICE_MAX_INDEX);
        return LC_EINVAL;
    }
    if (c->context_devices[0]) { // the indices' count here; the GPUs themselves when the executor starts
        int n = 0;
        for (const char *p = c->context_devices; *p;) {
            char *end;
            const long v = strtol(p, &end, 10);
            if (end == p || *p == '-' || *p == '+' || v > LC_DEVICE_MAX_INDEX || (*end && *end != ',') ||
                (*end == ',' && !end[1])) {
                errf(err, errlen, "[parallel] devices: '%s' is not CUDA device indices (0 to %d) separated by commas",
                     c->context_devices, LC_DEVICE_MAX_INDEX);
                return LC_EINVAL;
            }
            n++;
            p = *end ? end + 1 : end;
        }
        if (n != c->context) {
            errf(err, errlen, "[parallel] devices lists %d GPUs for context = %d ranks", n, c->context);
            return LC_EINVAL;
        }
    }
    if (c->kv_blocks == 0 && c->kv_bytes == 0) {
        errf(err, errlen, "[engine] one of kv_blocks or kv_bytes must be set");
        return LC_EINVAL;
    }
    if (c->prefill_chunk > 0 && c->max_batch_tokens > 0 && c->prefill_chunk > c->max_batch_tokens) {
        errf(err, errlen, "[engine] prefill_chunk (%d) exceeds max_batch_tokens (%d)", c->prefill_chunk,
             c->max_batch_tokens);
        return LC_EINVAL;
    }
    if (c->max_connections_per_ip > c->max_connections) {
        errf(err, errlen, "[server] max_connections_per_ip exceeds max_connections");
        return LC_EINVAL;
    }
    return 0;
}

int lc_device_spec_parse(const char *spec, int *cuda_index) {
    *cuda_index = -1;
    if (!spec) return LC_EINVAL;
    if (!strcmp(spec, "cpu")) return 0;
    if (!strcmp(spec, "auto")) {
        *cuda_index = LC_DEVICE_AUTO;
        return 0;
    }
    if (!strcmp(spec, "cuda")) {
        *cuda_index = 0;
        return 0;
    }
    if (strncmp(spec, "cuda:", 5) || spec[5] < '0' || spec[5] > '9') return LC_EINVAL;
    char *end;
    errno = 0;
    long v = strtol(spec + 5, &end, 10);
    if (errno || *end || v > LC_DEVICE_MAX_INDEX) return LC_EINVAL;
    *cuda_index = (int)v;
    return 0;
}

/* ---- command line ------------------------------------------------------------ */
void lc_config_usage(FILE *f, const char *prog) {
    fprintf(f,
            "usage: %s [options]\n"
            "  --config FILE         INI configuration (see conf/lacuna.conf)\n"
            "  --model PATH          GGUF model ([model] path)\n"
            "  --served-name NAME    model id clients use ([model] served_name)\n"
            "  --host ADDR           listen address ([server] host)\n"
            "  --port N              listen port ([server] port)\n"
            "  --reuse-port          share the port with other daemons ([server] reuse_port)\n"
            "  --api-key KEY         accepted API key; repeatable, replaces [server] api_keys\n"
            "  --device DEV          auto | cpu | cuda | cuda:N ([model] device)\n"
            "  --log-level LEVEL     error | warn | info | debug\n"
            "  --set SECTION.KEY=VALUE  any setting of the file\n"
            "  --check-config        validate, print the effective configuration, exit\n"
            "  --help, --version\n"
            "Environment: LACUNA_API_KEY adds one API key.\n",
            prog);
}

static const char *flag_value(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (!strncmp(a, name, n) && a[n] == '=') return a + n + 1;
    if (!strcmp(a, name)) {
        if (*i + 1 >= argc) return NULL;
        return argv[++*i];
    }
    return NULL;
}

static int is_flag(const char *a, const char *name) {
    size_t n = strlen(name);
    return !strncmp(a, name, n) && (a[n] == 0 || a[n] == '=');
}

int lc_config_from_args(lc_config_t *c, int argc, char **argv, int *action, char *err, size_t errlen) {
    *action = 0;
    lc_config_default(c);
    /* Pass 1: the file. */
    for (int i = 1; i < argc; i++) {
        if (is_flag(argv[i], "--config")) {
            const char *v = flag_value(argc, argv, &i, "--config");
            if (!v) {
                errf(err, errlen, "--config needs a value");
                return LC_EINVAL;
            }
            int rc = lc_config_load_file(c, v, err, errlen);
            if (rc) return rc;
        }
    }
    /* Pass 2: flags override it. */
    int keys_from_flags = 0;
    static const struct {
        const char *flag, *section, *key;
    } simple[] = {
        {"--model", "model", "path"}, {"--served-name", "model", "served_name"}, {"--host", "server", "host"},
        {"--port", "server", "port"}, {"--device", "model", "device"},           {"--log-level", "server", "log_level"},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--check-config")) {
            *action = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *action = 2;
            return 0;
        }
        if (!strcmp(a, "--version")) {
            *action = 3;
            return 0;
        }
        if (is_flag(a, "--config")) {
            flag_value(argc, argv, &i, "--config");
            continue;
        }
        if (!strcmp(a, "--reuse-port")) {
            c->reuse_port = 1;
            continue;
        }
        int done = 0;
        for (size_t k = 0; k < sizeof(simple) / sizeof(simple[0]) && !done; k++) {
            if (!is_flag(a, simple[k].flag)) continue;
            const char *v = flag_value(argc, argv, &i, simple[k].flag);
            if (!v) {
                errf(err, errlen, "%s needs a value", simple[k].flag);
                return LC_EINVAL;
            }
            int rc = lc_config_set(c, simple[k].section, simple[k].key, v, err, errlen);
            if (rc) return rc;
            done = 1;
        }
        if (done) continue;
        if (is_flag(a, "--api-key")) {
            const char *v = flag_value(argc, argv, &i, "--api-key");
            if (!v || !*v || strchr(v, ',')) {
                errf(err, errlen, "--api-key needs a value without commas");
                return LC_EINVAL;
            }
            size_t used = keys_from_flags ? strlen(c->api_keys) : 0;
            if (used + strlen(v) + 2 > sizeof(c->api_keys)) {
                errf(err, errlen, "too many --api-key values");
                return LC_EINVAL;
            }
            if (!keys_from_flags) c->api_keys[0] = 0;
            if (used) strcat(c->api_keys, ",");
            strcat(c->api_keys, v);
            keys_from_flags = 1;
            continue;
        }
        if (is_flag(a, "--set")) {
            const char *v = flag_value(argc, argv, &i, "--set");
            const char *dot = v ? strchr(v, '.') : NULL;
            const char *eq = dot ? strchr(dot, '=') : NULL;
            if (!eq) {
                errf(err, errlen, "--set needs SECTION.KEY=VALUE");
                return LC_EINVAL;
            }
            char sec[64], key[64];
            snprintf(sec, sizeof(sec), "%.*s", (int)(dot - v), v);
            snprintf(key, sizeof(key), "%.*s", (int)(eq - dot - 1), dot + 1);
            int rc = lc_config_set(c, sec, key, eq + 1, err, errlen);
            if (rc) return rc;
            continue;
        }
        errf(err, errlen, "unknown option '%s' (see --help)", a);
        return LC_EINVAL;
    }
    return lc_config_validate(c, err, errlen);
}

void lc_config_print(const lc_config_t *c, FILE *f) {
    const char *sec = "";
    for (int i = 0; i < N_TABLE; i++) {
        const centry_t *e = &table[i];
        if (strcmp(sec, e->section)) {
            fprintf(f, "%s[%s]\n", i ? "\n" : "", e->section);
            sec = e->section;
        }
        const char *base = (const char *)c + e->off;
        fprintf(f, "%s = ", e->key);
        switch (e->type) {
        case T_STR:
            if (!strcmp(e->key, "api_keys")) {
                int n = base[0] ? 1 : 0;
                for (const char *p = base; *p; p++) n += *p == ',';
                fprintf(f, "<%d key%s>\n", n, n == 1 ? "" : "s");
            } else {
                fprintf(f, "%s\n", base);
            }
            break;
        case T_INT: fprintf(f, "%d\n", *(const int *)base); break;
        case T_I64: fprintf(f, "%lld\n", *(const long long *)base); break;
        case T_BOOL: fprintf(f, "%s\n", *(const int *)base ? "true" : "false"); break;
        case T_DBL: fprintf(f, "%g\n", *(const double *)base); break;
        }
    }
}

/* ---- keys -------------------------------------------------------------------- */
static int push_key(char ***keys, int *n, const char *s, size_t len) {
    while (len && (s[0] == ' ' || s[0] == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n')) len--;
    if (!len) return 0;
    char **k = realloc(*keys, sizeof(char *) * (size_t)(*n + 1));
    if (!k) return LC_ENOMEM;
    *keys = k;
    k[*n] = strndup(s, len);
    if (!k[*n]) return LC_ENOMEM;
    (*n)++;
    return 0;
}

void lc_config_keys_free(char **keys, int n) {
    for (int i = 0; i < n; i++) free(keys[i]);
    free(keys);
}

int lc_config_keys(const lc_config_t *c, char ***keys, int *n, char *err, size_t errlen) {
    *keys = NULL;
    *n = 0;
    int rc = 0;
    const char *p = c->api_keys;
    while (*p && !rc) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        rc = push_key(keys, n, p, len);
        p += len + (e ? 1 : 0);
    }
    if (!rc && c->api_key_file[0]) {
        FILE *f = fopen(c->api_key_file, "r");
        if (!f) {
            errf(err, errlen, "cannot read api_key_file %s: %s", c->api_key_file, strerror(errno));
            rc = LC_EIO;
        } else {
            char line[1024];
            while (!rc && fgets(line, sizeof(line), f)) {
                char *h = line;
                while (*h == ' ' || *h == '\t') h++;
                if (*h == '#') continue;
                rc = push_key(keys, n, h, strlen(h));
            }
            fclose(f);
        }
    }
    const char *env = getenv("LACUNA_API_KEY");
    if (!rc && env && *env) rc = push_key(keys, n, env, strlen(env));
    if (rc) {
        if (rc == LC_ENOMEM) errf(err, errlen, "out of memory");
        lc_config_keys_free(*keys, *n);
        *keys = NULL;
        *n = 0;
    }
    return rc;
}
