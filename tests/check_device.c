/* Check suite for the device spec, GPU discovery and, where a GPU exists, the
 * CUDA kernels against CPU references (a CUDA build without a GPU reports
 * those as skipped, exit 77). The executor's choice of device is tested in
 * check_model. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/status.h"
#include "config.h"
#include "ops/device.h"
#include "testutil.h"
#ifdef HAVE_CUDA
#include "ops/cuda/cuda_ops.h"
#define HAVE_CUDA_BUILD 1
#else
#define HAVE_CUDA_BUILD 0
#endif

START_TEST(test_parse_specs) {
    /* The one parser behind the config check and the executor's choice. */
    int idx;
    ck_assert_int_eq(lc_device_spec_parse("cpu", &idx), 0);
    ck_assert_int_eq(idx, -1);
    ck_assert_int_eq(lc_device_spec_parse("auto", &idx), 0);
    ck_assert_int_eq(idx, LC_DEVICE_AUTO);
    ck_assert_int_eq(lc_device_spec_parse("cuda", &idx), 0);
    ck_assert_int_eq(idx, 0);
    ck_assert_int_eq(lc_device_spec_parse("cuda:7", &idx), 0);
    ck_assert_int_eq(idx, 7);
    ck_assert_int_eq(lc_device_spec_parse("cuda:255", &idx), 0);
    ck_assert_int_eq(idx, LC_DEVICE_MAX_INDEX);
    const char *bad[] = {"",
                         "gpu",
                         "cuda:",
                         "cuda:256",
                         "cuda:1x",
                         "cuda:+1",
                         "cuda: 1",
                         "cuda:-1",
                         "tpu:0",
                         "Auto",
                         "cuda:99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(lc_device_spec_parse(bad[i], &idx) == LC_EINVAL, "'%s' accepted", bad[i]);
    lc_config_t c;
    lc_config_default(&c);
    char err[256];
    snprintf(c.device, sizeof c.device, "cuda:256");
    ck_assert_int_eq(lc_config_validate(&c, err, sizeof err), LC_EINVAL);
    snprintf(c.device, sizeof c.device, "cuda:255");
    ck_assert_int_eq(lc_config_validate(&c, err, sizeof err), 0);
}
END_TEST

START_TEST(test_discovery) {
    char why[256] = "";
    int n = lc_device_count(why, sizeof why);
    ck_assert_int_ge(n, 0);
    if (n == 0) ck_assert_msg(why[0] != 0, "a missing GPU must come with a reason");
    char name[128];
    lc_device_name(0, name, sizeof name);
    if (n > 0) ck_assert_msg(name[0] != 0, "GPU 0 has no name");
    ck_assert_int_eq(lc_device_cuda_compiled(), HAVE_CUDA_BUILD);
}
END_TEST

#ifdef HAVE_CUDA
START_TEST(test_rmsnorm_vs_cpu) {
    const int rows = 37, dim = 576;
    float *x = malloc(sizeof(float) * rows * dim), *w = malloc(sizeof(float) * dim);
    float *y = malloc(sizeof(float) * rows * dim);
    srand(7);
    for (int i = 0; i < rows * dim; i++) x[i] = (float)rand() / RAND_MAX * 4.f - 2.f;
    for (int i = 0; i < dim; i++) w[i] = (float)rand() / RAND_MAX + 0.5f;
    ck_assert_int_eq(ops_cuda_rmsnorm_host(x, w, y, rows, dim, 1e-5f), 0);
    double max_rel = 0;
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[r * dim + i] * x[r * dim + i];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int i = 0; i < dim; i++) {
            double ref = x[r * dim + i] * inv * w[i];
            double rel = fabs(y[r * dim + i] - ref) / (fabs(ref) + 1e-6);
            if (rel > max_rel) max_rel = rel;
        }
    }
    ck_assert_msg(max_rel < 1e-4, "GPU rmsnorm max relative error %g >= 1e-4", max_rel);
    free(x);
    free(w);
    free(y);
}
END_TEST
#endif

int main(void) {
    Suite *s = suite_create("device");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_parse_specs);
    tcase_add_test(tc, test_discovery);
#ifdef HAVE_CUDA
    char why[256] = "";
    if (lc_device_count(why, sizeof why) > 0)
        tcase_add_test(tc, test_rmsnorm_vs_cpu);
    else
        tu_skip("no usable CUDA device (%s): the CUDA kernels are not compared with their CPU references", why);
#endif
    suite_add_tcase(s, tc);
    return tu_run(s);
}
