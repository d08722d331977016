/* lacunad's settings: built-in defaults (lc_config_default), then the INI
 * file (inih), then command-line flags. One table in config.c lists every
 * setting with its section, type and range, so parsing, validation and
 * `lacunad --check-config` never drift from each other. */
#ifndef LC_CONFIG_H
#define LC_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define LC_CONFIG_STR 512

typedef struct {
    /* [server] */
    char host[LC_CONFIG_STR];
    int port;
    int reuse_port;                   // 1: SO_REUSEPORT, several daemons share the port
    char api_keys[LC_CONFIG_STR * 4]; // comma-separated
    char api_key_file[LC_CONFIG_STR];
    int auth_metrics; // 1: /health and /metrics need a key too
    long long max_body_bytes;
    int max_connections;
    int max_connections_per_ip;
    int connection_timeout_s; // inactivity
    int request_deadline_s;   // absolute, to receive one request
    int keepalive_ping_s;     // SSE ": ping" period and dead-client sweep
    int drain_timeout_s;
    int max_n;
    int max_prompts;
    int max_waiting;
    char log_level[16];
    /* [model] */
    char model_path[LC_CONFIG_STR];
    char served_name[LC_CONFIG_STR];
    char device[32]; // auto | cpu | cuda | cuda:N
    int threads;     // 0: library default
    /* [engine] */
    int block_size; // 0: the device's choice
    long long kv_blocks;
    long long kv_bytes;
    double kv_gpu_fraction;
    int deterministic; // 1 (default): outputs independent of batch neighbours on the GPU too
    int cuda_graphs;   // 1 (default): decode steps on a GPU run as CUDA graphs
    int max_batch_tokens;
    int max_running;
    int prefill_chunk;
    int target_step_ms; // -1: off; 0: the device's default
    double kv_watermark;
    int prefix_cache;
    int kv_keep_sliding; // sliding-window layers keep every position (A/B; default off)
    /* [attention] */
    char prefill_method[32]; // dense | flexprefill | anchor | streaming
    char decode_method[32];  // dense | quest | tidal | streaming
    double gamma, tau, theta;
    int anchor_init, anchor_local, anchor_lookback; // AnchorAttention's windows (tokens)
    double anchor_probe;                            // AnchorAttention's probe (default 0.01; 0: off)
    int min_budget;
    char flex_select[16]; // tokens | blocks
    int decode_budget;
    int sparse_prefill_min_tokens;
    int sparse_decode_min_tokens;
    /* [parallel] */
    int context;                  // context parallelism: ranks (1: off)
    long long context_min_tokens; // a sequence this long runs sharded
    char context_devices[256];    // GPU: each rank's CUDA device, "0,1,2,3" ("": all on the executor's GPU)

    /* Not settings: where the file came from. */
    char config_path[LC_CONFIG_STR];
} lc_config_t;

void lc_config_default(lc_config_t *c);
/* Sets one setting from text ("server", "port", "8080"). Returns 0, or
 * LC_ENOTFOUND for an unknown key, or LC_EINVAL with a message in err. */
int lc_config_set(lc_config_t *c, const char *section, const char *key, const char *value, char *err, size_t errlen);
/* Reads an INI file on top of c. 0, or a negative status with a message. */
int lc_config_load_file(lc_config_t *c, const char *path, char *err, size_t errlen);
/* Cross-field checks (ranges are checked by lc_config_set). */
int lc_config_validate(const lc_config_t *c, char *err, size_t errlen);

/* Command line. Recognises --config FILE, --model, --host, --port,
 * --reuse-port, --api-key (repeatable; replaces the file's api_keys), --device,
 * --served-name, --log-level, --set section.key=value, and the actions
 * --check-config, --help, --version (returned in *action: 0 run, 1 check,
 * 2 help, 3 version). Defaults, then the file, then flags. Returns 0 or a
 * negative status with a message. */
int lc_config_from_args(lc_config_t *c, int argc, char **argv, int *action, char *err, size_t errlen);
void lc_config_usage(FILE *f, const char *prog);
/* Writes the effective configuration as INI (keys shown as "<n keys>"). */
void lc_config_print(const lc_config_t *c, FILE *f);

/* The [model] device setting's syntax, parsed in one place for the config
 * check and for device selection (model/exec.h): "cpu" gives *cuda_index =
 * -1, "auto" LC_DEVICE_AUTO (the first GPU when one is usable, else the CPU),
 * "cuda" 0, "cuda:N" N (0 <= N <= LC_DEVICE_MAX_INDEX). Returns 0, or
 * LC_EINVAL for anything else. */
#define LC_DEVICE_MAX_INDEX 255
#define LC_DEVICE_AUTO (-2)
int lc_device_spec_parse(const char *spec, int *cuda_index);

/* The API keys from api_keys, api_key_file (one a line, '#' comments) and
 * the environment variable LACUNA_API_KEY. *keys is a malloc'd array of
 * malloc'd strings owned by the caller (lc_config_keys_free). Returns 0 or a
 * negative status (unreadable key file). */
int lc_config_keys(const lc_config_t *c, char ***keys, int *n, char *err, size_t errlen);
void lc_config_keys_free(char **keys, int n);

#endif
