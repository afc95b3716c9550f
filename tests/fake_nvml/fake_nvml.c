/*
 * fake_nvml.c: a stand-in for libnvidia-ml.so, used only by the test harness.
 *
 * The daemon loads it through nvml-wrapper's real dynamic loading
 * (`Nvml::builder().lib_path(..)`), so every call crosses the same C ABI as
 * the real driver library. Readings come from a plain-text state file that
 * the test writes; it is re-read whenever its mtime, size or inode changes,
 * so a test changes the "hardware" by rewriting (or renaming over) the file.
 *
 * The state file is `$FAKE_NVML_STATE` when set, else `nvml_state.txt`
 * beside the loaded .so (found through dladdr), so two copies of the library
 * in two temp dirs are two independent machines.
 *
 * Format: one `key value` per line, `#` starts a comment.
 *   init_error N          nvmlInit_v2 returns N (nvml.h: 9 = DRIVER_NOT_LOADED,
 *                         18 = LIB_RM_VERSION_MISMATCH, 4 = NO_PERMISSION,
 *                         7 = INSUFFICIENT_SIZE, 999 = UNKNOWN); re-read at every
 *                         init, so a test can fail and then fix the driver
 *   device_error N        every device handle (nvmlDeviceGetHandleByIndex_v2 and
 *                         each call on a handle) answers N while the count still
 *                         answers: 1 = UNINITIALIZED, as when the driver is
 *                         unloaded or upgraded under a running process
 *   nvml_version S        nvmlSystemGetNVMLVersion (default "13." + driver_version,
 *                         as the measured 580 driver's CUDA 13.0 NVML)
 *   cuda_driver_version N nvmlSystemGetCudaDriverVersion_v2 (default 13000: the
 *                         measured H100's `nvidia-smi -q` says CUDA Version 13.0)
 *   <i>.recovery_action N field 230 (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION): 0 none,
 *                         1 gpu_reset, 2 node_reboot, 3 drain_p2p, 4 drain_and_reset
 *                         (nvml.h's nvmlDeviceGpuRecoveryAction_t); default 0, which
 *                         the measured H100 on 580 shows as "GPU Recovery Action:
 *                         None" in nvidia-smi -q. `unsupported recovery` answers
 *                         NOT_SUPPORTED, as a driver that does not know the field
 *   driver_version S
 *   count N
 *   <i>.name S  <i>.uuid S  <i>.pci_bus_id S
 *   <i>.util_gpu N  <i>.util_mem N             percent
 *   <i>.mem_total N <i>.mem_used N <i>.mem_free N   bytes
 *   <i>.temp N                                 degrees C
 *   <i>.power_mw N  <i>.power_limit_mw N       milliwatts
 *   <i>.fan N                                  percent (every fan)
 *   <i>.fans N                                 fans (nvmlDeviceGetNumFans), default 1
 *   <i>.clock_graphics N <i>.clock_sm N <i>.clock_mem N   MHz
 *   <i>.enc N <i>.dec N                        percent
 *   <i>.energy_mj N                            millijoules since driver load
 *   <i>.ecc_corrected N <i>.ecc_uncorrected N
 *   <i>.throttle N                             bitmask (decimal or 0x hex)
 *   <i>.lost 1                                 every call returns GPU_IS_LOST
 *   <i>.hang_ms N                              nvmlDeviceGetTemperature blocks N ms
 *                                              (a stuck driver call)
 *   <i>.unsupported a,b,c                      fields answering NOT_SUPPORTED:
 *       util mem temp power power_limit fan clocks enc dec energy ecc throttle procs events
 *       mem_temp clock_events remapped thresholds max_clocks pcie_link pcie_replay nvlink
 *       gpm procs_util recovery
 *   <i>.xid 79,13,79                           every critical XID ever raised;
 *                                              each is delivered once by
 *                                              nvmlEventSetWait_v2
 *   <i>.procs pid:bytes:name;pid:bytes:name    running compute processes
 *   <i>.proc_util pid:sm:mem;pid:sm:mem        per-process SM / memory utilization (%),
 *                                              nvmlDeviceGetProcessesUtilizationInfo and
 *                                              nvmlDeviceGetProcessUtilization; none with
 *                                              a non-zero value = NOT_FOUND (idle)
 *   <i>.mem_temp N                             HBM temperature (field MEMORY_TEMP), 0 = not supported
 *   <i>.temp_shutdown N <i>.temp_slowdown N <i>.temp_gpu_max N <i>.temp_mem_max N
 *                                              thresholds, 0 = not supported
 *   <i>.max_clock_graphics N <i>.max_clock_sm N <i>.max_clock_mem N   MHz
 *   <i>.pcie_gen N <i>.pcie_width N <i>.pcie_replay N
 *   <i>.remapped_cor N <i>.remapped_unc N <i>.remapped_pending 0|1 <i>.remapped_failure 0|1
 *   <i>.nvlinks N                              NVLink links (0: NvLinkState NOT_SUPPORTED)
 *   <i>.gpm name:value,...                     GPM metric values as the driver answers them
 *       (percent; pcie_tx/pcie_rx/nvlink_tx/nvlink_rx in MiB/s). Names: graphics sm occupancy
 *       integer tensor dfma hmma imma dram fp64 fp32 fp16 pcie_tx pcie_rx nvlink_rx nvlink_tx.
 *       A GPU with a `gpm` line supports GPM unless the profile says otherwise.
 *
 *   profile PATH                               a driver profile (also $FAKE_NVML_PROFILE)
 *
 * Driver profiles (tests/fake_nvml/profiles/NAME.json) make the fake answer
 * like a measured card: per NVML function, the return code (`rc`, e.g. 2 =
 * INVALID_ARGUMENT), a value where one is fixed by the card (`value`, e.g.
 * nvmlDeviceGetNumFans = 0) and the cost (`cost_us`, a busy-wait of that
 * many microseconds, so CPU figures taken with the fake mean something):
 *
 *   {"driver_version": "580.159.04",
 *    "calls": {"nvmlDeviceGetFanSpeed_v2": {"rc": 2, "cost_us": 0.3}, ...}}
 *
 * A profile's `"state": ["temp_slowdown 89", ...]` holds what the measured
 * card answers (thresholds, max clocks, PCIe link, idle GPM values): these
 * lines apply to every GPU before the state file, whose lines win.
 *
 * An entry may also carry `per_item_us` (added per field of a GetFieldValues
 * call or per metric of a GpmMetricsGet call) and `first_cost_us` (the cost
 * of the first call in the process, e.g. the first GPM sample). Fields read
 * through nvmlDeviceGetFieldValues have entries of their own named
 * `field.MEMORY_TEMP`, `field.CLOCKS_EVENT_REASON`, `field.REMAPPED`,
 * `field.PCIE_REPLAY_COUNTER`, `field.NVLINK_THROUGHPUT_DATA`: their `rc` is
 * the per-field return code inside a successful call, their `cost_us` what
 * each such field adds to the call.
 *
 * Clock-event-reason durations behave like the driver's: a nanosecond
 * counter per reason that grows with (monotonic) time while that reason's
 * bit is set in `<i>.throttle`. Field IDs follow the driver version's
 * numbering: from 580.82 on, the thermal and power-brake durations are
 * 269-271 (251-253 before), as in NVML 13 Update 1.
 *
 * The parser only understands that shape. Values a test changes at run time
 * (temperature, lost GPUs, XIDs, processes) stay in the state file.
 *
 * Every call is counted; the counts are written as `NAME COUNT` lines to
 * `nvml_calls.txt` beside the state file whenever the device count is read
 * (the start of each daemon poll) and at nvmlShutdown, so tests can assert
 * cadences.
 *
 * Built with -DOLD_DRIVER it leaves out nvmlDeviceGetMemoryInfo_v2,
 * nvmlDeviceGetFanSpeed_v2, nvmlDeviceGetNumFans and
 * nvmlDeviceGetTotalEnergyConsumption, which is how a pre-Volta-era driver
 * looks to nvml-wrapper (FailedToLoadSymbol).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef void *nvmlEventSet_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_FUNCTION_NOT_FOUND 13
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define MAX_XID 256
#define MAX_PROCS 32
#define EVENT_XID 0x8ULL

typedef struct {
    unsigned int pid;
    unsigned long long used;
    char name[64];
} proc_t;

typedef struct {
    unsigned int pid, sm, mem;
} putil_t;

/* GPM metric IDs below this are the ones the fake knows. */
#define GPM_IDS 64

/* Every NVML function the fake answers, for profiles and call counts. */
#define CALLS(X)                                                  \
    X(C_INIT, "nvmlInit_v2")                                      \
    X(C_DRIVER_VERSION, "nvmlSystemGetDriverVersion")             \
    X(C_COUNT, "nvmlDeviceGetCount_v2")                           \
    X(C_HANDLE, "nvmlDeviceGetHandleByIndex_v2")                  \
    X(C_NAME, "nvmlDeviceGetName")                                \
    X(C_UUID, "nvmlDeviceGetUUID")                                \
    X(C_PCI, "nvmlDeviceGetPciInfo_v3")                           \
    X(C_UTIL, "nvmlDeviceGetUtilizationRates")                    \
    X(C_MEM, "nvmlDeviceGetMemoryInfo_v2")                        \
    X(C_NUM_FANS, "nvmlDeviceGetNumFans")                         \
    X(C_FAN, "nvmlDeviceGetFanSpeed_v2")                          \
    X(C_ENERGY, "nvmlDeviceGetTotalEnergyConsumption")            \
    X(C_TEMP, "nvmlDeviceGetTemperature")                         \
    X(C_POWER, "nvmlDeviceGetPowerUsage")                         \
    X(C_POWER_LIMIT, "nvmlDeviceGetEnforcedPowerLimit")           \
    X(C_CLOCK, "nvmlDeviceGetClockInfo")                          \
    X(C_ENC, "nvmlDeviceGetEncoderUtilization")                   \
    X(C_DEC, "nvmlDeviceGetDecoderUtilization")                   \
    X(C_ECC, "nvmlDeviceGetTotalEccErrors")                       \
    X(C_THROTTLE, "nvmlDeviceGetCurrentClocksThrottleReasons")    \
    X(C_PROCS, "nvmlDeviceGetComputeRunningProcesses_v3")         \
    X(C_PROC_NAME, "nvmlSystemGetProcessName")                    \
    X(C_REGISTER, "nvmlDeviceRegisterEvents")                     \
    X(C_EVENT_WAIT, "nvmlEventSetWait_v2")                         \
    X(C_FIELD_VALUES, "nvmlDeviceGetFieldValues")                 \
    X(F_MEM_TEMP, "field.MEMORY_TEMP")                            \
    X(F_CLOCK_EVENT, "field.CLOCKS_EVENT_REASON")                 \
    X(F_REMAPPED, "field.REMAPPED")                               \
    X(F_PCIE_REPLAY, "field.PCIE_REPLAY_COUNTER")                 \
    X(F_NVLINK_THROUGHPUT, "field.NVLINK_THROUGHPUT_DATA")        \
    X(C_TEMP_THRESHOLD, "nvmlDeviceGetTemperatureThreshold")      \
    X(C_MAX_CLOCK, "nvmlDeviceGetMaxClockInfo")                   \
    X(C_PCIE_GEN, "nvmlDeviceGetCurrPcieLinkGeneration")          \
    X(C_PCIE_WIDTH, "nvmlDeviceGetCurrPcieLinkWidth")             \
    X(C_PCIE_REPLAY, "nvmlDeviceGetPcieReplayCounter")            \
    X(C_NVLINK_STATE, "nvmlDeviceGetNvLinkState")                 \
    X(C_GPM_SUPPORT, "nvmlGpmQueryDeviceSupport")                 \
    X(C_GPM_ALLOC, "nvmlGpmSampleAlloc")                          \
    X(C_GPM_FREE, "nvmlGpmSampleFree")                            \
    X(C_GPM_SAMPLE, "nvmlGpmSampleGet")                           \
    X(C_GPM_METRICS, "nvmlGpmMetricsGet")                         \
    X(C_PROCS_UTIL_INFO, "nvmlDeviceGetProcessesUtilizationInfo") \
    X(C_PROC_UTIL, "nvmlDeviceGetProcessUtilization")

#define AS_ENUM(id, name) id,
#define AS_NAME(id, name) name,
enum { CALLS(AS_ENUM) C_COUNT_OF };
static const char *call_names[] = {CALLS(AS_NAME)};

typedef struct {
    int rc;
    double cost_us;
    int has_value;
    double value;
    double per_item_us;
    double first_cost_us;
} prof_t;

static prof_t prof[C_COUNT_OF];
static unsigned long long calls[C_COUNT_OF];
static char prof_path[4096];
static char prof_driver_version[80];
/* The profile's `"state": ["key value", ...]` array, as text. */
static char prof_state[1 << 14];

typedef struct {
    char name[96], uuid[96], pci_bus_id[32];
    unsigned int util_gpu, util_mem, temp, fan, fans, enc, dec;
    unsigned long long mem_total, mem_used, mem_free;
    unsigned int power_mw, power_limit_mw;
    unsigned int clock_graphics, clock_sm, clock_mem;
    unsigned long long energy_mj, ecc_corrected, ecc_uncorrected, throttle;
    int lost;
    unsigned int hang_ms;
    char unsupported[256];
    unsigned long long xid[MAX_XID];
    int xid_count;
    proc_t procs[MAX_PROCS];
    int proc_count;
    putil_t putil[MAX_PROCS];
    int putil_count;
    unsigned int mem_temp, temp_shutdown, temp_slowdown, temp_gpu_max, temp_mem_max;
    unsigned int max_clock_graphics, max_clock_sm, max_clock_mem;
    unsigned int pcie_gen, pcie_width, pcie_replay, nvlinks;
    unsigned int remapped_cor, remapped_unc, remapped_pending, remapped_failure;
    int has_gpm;
    double gpm[GPM_IDS];
    unsigned int recovery_action;
} gpu_t;

typedef struct {
    int init_error;
    int device_error;
    char nvml_version[80];
    int cuda_driver_version;
    char driver_version[80];
    unsigned int count;
    gpu_t gpu[MAX_GPUS];
} state_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static state_t st;
static struct stat last_stat;
static int loaded = 0;
static int initialised = 0;
/* How many XIDs of each GPU have been handed out already. */
static int xid_delivered[MAX_GPUS];
static int registered[MAX_GPUS];

static void state_path(char *out, size_t len) {
    const char *env = getenv("FAKE_NVML_STATE");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    Dl_info info;
    if (dladdr((void *)&state_path, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash) {
            snprintf(out, len, "%.*s/nvml_state.txt", (int)(slash - info.dli_fname), info.dli_fname);
            return;
        }
    }
    snprintf(out, len, "nvml_state.txt");
}

static unsigned long long num(const char *v) { return strtoull(v, NULL, 0); }

static void parse_procs(gpu_t *g, char *v) {
    g->proc_count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(v, ";", &save); tok && g->proc_count < MAX_PROCS; tok = strtok_r(NULL, ";", &save)) {
        proc_t *p = &g->procs[g->proc_count];
        char *c1 = strchr(tok, ':');
        if (!c1) continue;
        char *c2 = strchr(c1 + 1, ':');
        p->pid = (unsigned int)num(tok);
        p->used = num(c1 + 1);
        snprintf(p->name, sizeof p->name, "%s", c2 ? c2 + 1 : "");
        g->proc_count++;
    }
}

static void parse_xids(gpu_t *g, char *v) {
    g->xid_count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(v, ",", &save); tok && g->xid_count < MAX_XID; tok = strtok_r(NULL, ",", &save))
        g->xid[g->xid_count++] = num(tok);
}

/* Loads a driver profile (see the header). Called with `lock` held. */
static void load_profile(const char *path) {
    memset(prof, 0, sizeof prof);
    prof_driver_version[0] = 0;
    prof_state[0] = 0;
    snprintf(prof_path, sizeof prof_path, "%s", path);
    FILE *f = fopen(path, "r");
    if (!f) return;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *dv = strstr(buf, "\"driver_version\"");
    if (dv && (dv = strchr(dv + 16, ':')) && (dv = strchr(dv, '"'))) {
        char *end = strchr(dv + 1, '"');
        if (end) snprintf(prof_driver_version, sizeof prof_driver_version, "%.*s", (int)(end - dv - 1), dv + 1);
    }
    char *state = strstr(buf, "\"state\"");
    if (state) {
        char *close = strchr(state, ']');
        if (close) snprintf(prof_state, sizeof prof_state, "%.*s", (int)(close - state + 1), state);
    }
    char *from = strstr(buf, "\"calls\"");
    if (!from) from = buf;
    for (int c = 0; c < C_COUNT_OF; c++) {
        char key[128];
        snprintf(key, sizeof key, "\"%s\"", call_names[c]);
        char *p = strstr(from, key);
        if (!p) continue;
        char *open = strchr(p + strlen(key), '{');
        char *close = open ? strchr(open, '}') : NULL;
        if (!close) continue;
        *close = 0;
        char *v;
        if ((v = strstr(open, "\"rc\"")) && (v = strchr(v, ':'))) prof[c].rc = (int)strtol(v + 1, NULL, 10);
        if ((v = strstr(open, "\"cost_us\"")) && (v = strchr(v, ':'))) prof[c].cost_us = strtod(v + 1, NULL);
        if ((v = strstr(open, "\"per_item_us\"")) && (v = strchr(v, ':'))) prof[c].per_item_us = strtod(v + 1, NULL);
        if ((v = strstr(open, "\"first_cost_us\"")) && (v = strchr(v, ':'))) prof[c].first_cost_us = strtod(v + 1, NULL);
        if ((v = strstr(open, "\"value\"")) && (v = strchr(v, ':'))) {
            prof[c].has_value = 1;
            prof[c].value = strtod(v + 1, NULL);
        }
        *close = '}';
    }
}

/* Busy-waits `us` microseconds: a real driver call's cost is CPU time. */
static void busy(double us) {
    if (us <= 0) return;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1e6 + (t.tv_nsec - t0.tv_nsec) / 1e3 < us);
}

/* Counts a call and spends its profiled cost on the CPU (the first call in
 * the process costs `first_cost_us` where the profile gives one). */
static void spend(int c) {
    unsigned long long n = __atomic_add_fetch(&calls[c], 1, __ATOMIC_RELAXED);
    busy(n == 1 && prof[c].first_cost_us > 0 ? prof[c].first_cost_us : prof[c].cost_us);
}

/* A call that handles `items` entries (fields, metrics): the per-item cost. */
__attribute__((unused)) static void spend_items(int c, unsigned int items) { busy(prof[c].per_item_us * items); }

static unsigned long long mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

/* Clock-event-reason duration counters (ns), per GPU and reason, grown with
 * time while the reason's bit is set. Kept outside the state, which is
 * re-read from the file. */
static const unsigned long long ce_bits[5] = {0x4, 0x10, 0x20, 0x40, 0x80};
static unsigned long long ce_ns[MAX_GPUS][5];
static unsigned long long ce_last[MAX_GPUS];

/* Writes the call counts beside the state file. Called with `lock` held. */
static void write_counts(void);

/* Adds the time since the last advance to every active reason's counter,
 * under the throttle mask in force over that time. Called with `lock` held. */
static void advance_clock_events(void) {
    unsigned long long now = mono_ns();
    for (unsigned int i = 0; i < MAX_GPUS; i++) {
        if (ce_last[i] && i < st.count)
            for (int r = 0; r < 5; r++)
                if (st.gpu[i].throttle & ce_bits[r]) ce_ns[i][r] += now - ce_last[i];
        ce_last[i] = now;
    }
}

static const char *gpm_names[GPM_IDS] = {
    [1] = "graphics", [2] = "sm", [3] = "occupancy", [4] = "integer", [5] = "tensor", [6] = "dfma",
    [7] = "hmma", [9] = "imma", [10] = "dram", [11] = "fp64", [12] = "fp32", [13] = "fp16",
    [20] = "pcie_tx", [21] = "pcie_rx", [60] = "nvlink_rx", [61] = "nvlink_tx",
};

static void parse_gpm(gpu_t *g, char *v) {
    g->has_gpm = 1;
    char *save = NULL;
    for (char *tok = strtok_r(v, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        if (!colon) continue;
        *colon = 0;
        for (int id = 0; id < GPM_IDS; id++)
            if (gpm_names[id] && !strcmp(gpm_names[id], tok)) g->gpm[id] = strtod(colon + 1, NULL);
    }
}

static void parse_putil(gpu_t *g, char *v) {
    g->putil_count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(v, ";", &save); tok && g->putil_count < MAX_PROCS; tok = strtok_r(NULL, ";", &save)) {
        putil_t *p = &g->putil[g->putil_count];
        char *c1 = strchr(tok, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        p->pid = (unsigned int)num(tok);
        p->sm = (unsigned int)num(c1 + 1);
        p->mem = (unsigned int)num(c2 + 1);
        g->putil_count++;
    }
}

/* Sets one GPU key (`name`, `temp`, ...) of GPU `i`. */
static void apply_gpu_key(unsigned int i, const char *k, char *v) {
    if (i >= MAX_GPUS) return;
    gpu_t *g = &st.gpu[i];
#define U(field) else if (!strcmp(k, #field)) g->field = num(v)
    if (!strcmp(k, "name")) snprintf(g->name, sizeof g->name, "%s", v);
    else if (!strcmp(k, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", v);
    else if (!strcmp(k, "pci_bus_id")) snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%s", v);
    else if (!strcmp(k, "unsupported")) snprintf(g->unsupported, sizeof g->unsupported, ",%s,", v);
    else if (!strcmp(k, "xid")) parse_xids(g, v);
    else if (!strcmp(k, "procs")) parse_procs(g, v);
    else if (!strcmp(k, "proc_util")) parse_putil(g, v);
    else if (!strcmp(k, "gpm")) parse_gpm(g, v);
    else if (!strcmp(k, "lost")) g->lost = (int)num(v);
    U(util_gpu); U(util_mem); U(temp); U(fan); U(fans); U(enc); U(dec);
    U(mem_total); U(mem_used); U(mem_free);
    U(power_mw); U(power_limit_mw);
    U(clock_graphics); U(clock_sm); U(clock_mem);
    U(energy_mj); U(ecc_corrected); U(ecc_uncorrected); U(throttle); U(hang_ms);
    U(mem_temp); U(temp_shutdown); U(temp_slowdown); U(temp_gpu_max); U(temp_mem_max);
    U(max_clock_graphics); U(max_clock_sm); U(max_clock_mem);
    U(pcie_gen); U(pcie_width); U(pcie_replay); U(nvlinks);
    U(remapped_cor); U(remapped_unc); U(remapped_pending); U(remapped_failure);
    U(recovery_action);
#undef U
}

/* The profile's `"state"` lines (`key value`): what the measured card
 * answers, applied to every GPU before the state file, which overrides. */
static void apply_profile_state(void) {
    char *p = strstr(prof_state, "[");
    if (!p) return;
    char *end = strchr(p, ']');
    while (p && (p = strchr(p, '"')) && (!end || p < end)) {
        char *close = strchr(p + 1, '"');
        if (!close) break;
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(close - p - 1), p + 1);
        char *sp = strchr(line, ' ');
        if (sp) {
            *sp = 0;
            for (unsigned int i = 0; i < MAX_GPUS; i++) {
                char value[512];
                snprintf(value, sizeof value, "%s", sp + 1);
                apply_gpu_key(i, line, value);
            }
        }
        p = close + 1;
    }
}

/* Applies one line of the state file. */
static void apply_line(char *line, int *version_set) {
    char *sp = strchr(line, ' ');
    if (!sp) return;
    *sp = 0;
    char *key = line, *v = sp + 1;
    if (!strcmp(key, "init_error")) st.init_error = (int)num(v);
    else if (!strcmp(key, "device_error")) st.device_error = (int)num(v);
    else if (!strcmp(key, "nvml_version")) snprintf(st.nvml_version, sizeof st.nvml_version, "%s", v);
    else if (!strcmp(key, "cuda_driver_version")) st.cuda_driver_version = (int)num(v);
    else if (!strcmp(key, "profile")) return;
    else if (!strcmp(key, "driver_version")) {
        snprintf(st.driver_version, sizeof st.driver_version, "%s", v);
        *version_set = 1;
    }
    else if (!strcmp(key, "count")) st.count = (unsigned int)num(v) > MAX_GPUS ? MAX_GPUS : (unsigned int)num(v);
    else {
        char *dot = strchr(key, '.');
        if (dot) apply_gpu_key((unsigned int)strtoul(key, NULL, 10), dot + 1, v);
    }
}

/* Re-reads the state file when it changed: the profile it names first (its
 * `state` lines are the card's defaults), then its own lines. Called with
 * `lock` held. */
static void refresh(void) {
    advance_clock_events();
    char path[4096];
    state_path(path, sizeof path);
    struct stat s;
    if (stat(path, &s) != 0) {
        if (!loaded) {
            memset(&st, 0, sizeof st);
            loaded = 1;
        }
        return;
    }
    if (loaded && s.st_mtim.tv_sec == last_stat.st_mtim.tv_sec && s.st_mtim.tv_nsec == last_stat.st_mtim.tv_nsec &&
        s.st_size == last_stat.st_size && s.st_ino == last_stat.st_ino)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    static char text[1 << 18];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    last_stat = s;
    loaded = 1;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < MAX_GPUS; i++) st.gpu[i].fans = 1;
    const char *env_profile = getenv("FAKE_NVML_PROFILE");
    char want_profile[4096] = "";
    if (env_profile) snprintf(want_profile, sizeof want_profile, "%s", env_profile);
    char *named = strstr(text, "profile ");
    if (named && (named == text || named[-1] == '\n')) {
        size_t len = strcspn(named + 8, "\r\n");
        snprintf(want_profile, sizeof want_profile, "%.*s", (int)len, named + 8);
    }
    if (strcmp(want_profile, prof_path) != 0) load_profile(want_profile);
    apply_profile_state();
    int version_set = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line[strcspn(line, "\r")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        apply_line(line, &version_set);
    }
    if (!version_set)
        snprintf(st.driver_version, sizeof st.driver_version, "%s",
                 prof_driver_version[0] ? prof_driver_version : "550.54.15");
}

static void write_counts(void) {
    char path[4096], out[4200];
    state_path(path, sizeof path);
    char *slash = strrchr(path, '/');
    if (slash) snprintf(out, sizeof out, "%.*s/nvml_calls.txt", (int)(slash - path), path);
    else snprintf(out, sizeof out, "nvml_calls.txt");
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (int c = 0; c < C_COUNT_OF; c++)
        fprintf(f, "%s %llu\n", call_names[c], __atomic_load_n(&calls[c], __ATOMIC_RELAXED));
    fclose(f);
    rename(tmp, out);
}

static int unsupported(const gpu_t *g, const char *field) {
    char needle[64];
    snprintf(needle, sizeof needle, ",%s,", field);
    return strstr(g->unsupported, needle) != NULL;
}

/* Device handles are index + 1, never dereferenced by the caller. */
static nvmlReturn_t lookup(nvmlDevice_t dev, gpu_t **out, unsigned int *idx) {
    uintptr_t h = (uintptr_t)dev;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    refresh();
    if (st.device_error) return st.device_error;
    if (h == 0 || h > st.count) return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g = &st.gpu[h - 1];
    if (g->lost) return NVML_ERROR_GPU_IS_LOST;
    *out = g;
    if (idx) *idx = (unsigned int)(h - 1);
    return NVML_SUCCESS;
}

/* Opens a device call: counts it and spends its profiled cost, takes the
 * lock, resolves the handle, then applies the profile's return code and the
 * state file's `unsupported` list. */
#define DEVICE_CALL(field, id)                                  \
    spend(id);                                                  \
    gpu_t *g;                                                   \
    pthread_mutex_lock(&lock);                                  \
    nvmlReturn_t rc = lookup(device, &g, NULL);                 \
    if (rc == NVML_SUCCESS && prof[id].rc)                      \
        rc = prof[id].rc;                                       \
    if (rc == NVML_SUCCESS && field && unsupported(g, field))   \
        rc = NVML_ERROR_NOT_SUPPORTED;                          \
    if (rc != NVML_SUCCESS) {                                   \
        pthread_mutex_unlock(&lock);                            \
        return rc;                                              \
    }
#define DONE pthread_mutex_unlock(&lock); return NVML_SUCCESS

static void copy_str(char *dst, unsigned int len, const char *src) {
    if (len == 0) return;
    snprintf(dst, len, "%s", src);
}

nvmlReturn_t nvmlInit_v2(void) {
    spend(C_INIT);
    pthread_mutex_lock(&lock);
    refresh();
    int err = st.init_error;
    if (!err) initialised = 1;
    pthread_mutex_unlock(&lock);
    return err;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return nvmlInit_v2(); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    write_counts();
    initialised = 0;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case 9: return "Driver Not Loaded";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 4: return "Insufficient Permissions";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int len) {
    spend(C_DRIVER_VERSION);
    pthread_mutex_lock(&lock);
    refresh();
    copy_str(version, len, st.driver_version);
    DONE;
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int len) {
    pthread_mutex_lock(&lock);
    refresh();
    if (st.nvml_version[0]) copy_str(version, len, st.nvml_version);
    else {
        char v[100];
        snprintf(v, sizeof v, "13.%s", st.driver_version);
        copy_str(version, len, v);
    }
    DONE;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    pthread_mutex_lock(&lock);
    refresh();
    *version = st.cuda_driver_version ? st.cuda_driver_version : 13000;
    DONE;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    spend(C_COUNT);
    pthread_mutex_lock(&lock);
    if (!initialised) { pthread_mutex_unlock(&lock); return NVML_ERROR_UNINITIALIZED; }
    refresh();
    write_counts();
    *count = st.count;
    DONE;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    spend(C_HANDLE);
    pthread_mutex_lock(&lock);
    if (!initialised) { pthread_mutex_unlock(&lock); return NVML_ERROR_UNINITIALIZED; }
    refresh();
    if (st.device_error) { int e = st.device_error; pthread_mutex_unlock(&lock); return e; }
    if (index >= st.count) { pthread_mutex_unlock(&lock); return NVML_ERROR_INVALID_ARGUMENT; }
    if (st.gpu[index].lost) { pthread_mutex_unlock(&lock); return NVML_ERROR_GPU_IS_LOST; }
    *device = (nvmlDevice_t)(uintptr_t)(index + 1);
    DONE;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    gpu_t *g;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = lookup(device, &g, index);
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int len) {
    DEVICE_CALL(NULL, C_NAME);
    copy_str(name, len, g->name);
    DONE;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int len) {
    DEVICE_CALL(NULL, C_UUID);
    copy_str(uuid, len, g->uuid);
    DONE;
}

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    DEVICE_CALL(NULL, C_PCI);
    memset(pci, 0, sizeof *pci);
    copy_str(pci->busId, sizeof pci->busId, g->pci_bus_id);
    copy_str(pci->busIdLegacy, sizeof pci->busIdLegacy, g->pci_bus_id);
    DONE;
}

typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    DEVICE_CALL("util", C_UTIL);
    u->gpu = g->util_gpu;
    u->memory = g->util_mem;
    DONE;
}

#ifndef OLD_DRIVER
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    DEVICE_CALL("mem", C_MEM);
    m->total = g->mem_total;
    m->reserved = 0;
    m->free = g->mem_free;
    m->used = g->mem_used;
    DONE;
}

/* The number of fans: the profile's value when it fixes one, else the
 * state file's `fans` (default 1). */
static unsigned int fan_count(const gpu_t *g) {
    return prof[C_NUM_FANS].has_value ? (unsigned int)prof[C_NUM_FANS].value : g->fans;
}

nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *n) {
    DEVICE_CALL(NULL, C_NUM_FANS);
    *n = fan_count(g);
    DONE;
}

/* Like the real driver: a fan index the card does not have is
 * INVALID_ARGUMENT (on a fanless H100, fan 0 is one). */
nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed) {
    DEVICE_CALL("fan", C_FAN);
    if (fan >= fan_count(g)) { pthread_mutex_unlock(&lock); return NVML_ERROR_INVALID_ARGUMENT; }
    *speed = g->fan;
    DONE;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    DEVICE_CALL("energy", C_ENERGY);
    *energy = g->energy_mj;
    DONE;
}
#endif

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    DEVICE_CALL("temp", C_TEMP);
    if (sensor != 0) { pthread_mutex_unlock(&lock); return NVML_ERROR_INVALID_ARGUMENT; }
    *temp = g->temp;
    unsigned int hang = g->hang_ms;
    pthread_mutex_unlock(&lock);
    if (hang) {
        struct timespec ts = { hang / 1000, (long)(hang % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *mw) {
    DEVICE_CALL("power", C_POWER);
    *mw = g->power_mw;
    DONE;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *mw) {
    DEVICE_CALL("power_limit", C_POWER_LIMIT);
    *mw = g->power_limit_mw;
    DONE;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *mhz) {
    DEVICE_CALL("clocks", C_CLOCK);
    switch (type) {
    case 0: *mhz = g->clock_graphics; break;
    case 1: *mhz = g->clock_sm; break;
    case 2: *mhz = g->clock_mem; break;
    default: pthread_mutex_unlock(&lock); return NVML_ERROR_NOT_SUPPORTED;
    }
    DONE;
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period_us) {
    DEVICE_CALL("enc", C_ENC);
    *util = g->enc;
    *period_us = 1000000;
    DONE;
}

nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period_us) {
    DEVICE_CALL("dec", C_DEC);
    *util = g->dec;
    *period_us = 1000000;
    DONE;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter_type,
                                         unsigned long long *count) {
    DEVICE_CALL("ecc", C_ECC);
    (void)counter_type;
    *count = error_type == 0 ? g->ecc_corrected : g->ecc_uncorrected;
    DONE;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    DEVICE_CALL("throttle", C_THROTTLE);
    *reasons = g->throttle;
    DONE;
}

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    DEVICE_CALL("procs", C_PROCS);
    unsigned int n = (unsigned int)g->proc_count;
    if (infos == NULL || *count < n) {
        *count = n;
        pthread_mutex_unlock(&lock);
        return n == 0 && infos == NULL ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < n; i++) {
        infos[i].pid = g->procs[i].pid;
        infos[i].usedGpuMemory = g->procs[i].used;
        infos[i].gpuInstanceId = 0xFFFFFFFF;
        infos[i].computeInstanceId = 0xFFFFFFFF;
    }
    *count = n;
    DONE;
}

nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int len) {
    spend(C_PROC_NAME);
    pthread_mutex_lock(&lock);
    refresh();
    for (unsigned int i = 0; i < st.count; i++)
        for (int j = 0; j < st.gpu[i].proc_count; j++)
            if (st.gpu[i].procs[j].pid == pid) {
                copy_str(name, len, st.gpu[i].procs[j].name);
                DONE;
            }
    pthread_mutex_unlock(&lock);
    return NVML_ERROR_INVALID_ARGUMENT;
}

/* ---- events: one global set is enough for the daemon ---- */
static int event_set_token;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    *set = (nvmlEventSet_t)&event_set_token;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    (void)set;
    pthread_mutex_lock(&lock);
    memset(registered, 0, sizeof registered);
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    DEVICE_CALL("events", C_REGISTER);
    *types = EVENT_XID;
    DONE;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set) {
    unsigned int idx = 0;
    gpu_t *g;
    (void)set;
    spend(C_REGISTER);
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = lookup(device, &g, &idx);
    if (rc == NVML_SUCCESS && unsupported(g, "events")) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && (types & EVENT_XID)) registered[idx] = 1;
    pthread_mutex_unlock(&lock);
    return rc;
}

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

/* Delivers the next undelivered XID of any registered GPU, or times out at once. */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
    (void)set;
    (void)timeout_ms;
    spend(C_EVENT_WAIT);
    pthread_mutex_lock(&lock);
    refresh();
    for (unsigned int i = 0; i < st.count && i < MAX_GPUS; i++) {
        if (!registered[i] || st.gpu[i].lost) continue;
        if (xid_delivered[i] < st.gpu[i].xid_count) {
            memset(data, 0, sizeof *data);
            data->device = (nvmlDevice_t)(uintptr_t)(i + 1);
            data->eventType = EVENT_XID;
            data->eventData = st.gpu[i].xid[xid_delivered[i]++];
            DONE;
        }
    }
    pthread_mutex_unlock(&lock);
    return NVML_ERROR_TIMEOUT;
}

/* ---- thresholds, max clocks, PCIe, NVLink ---- */

/* A value of 0 in the state means the card does not report it. */
#define VALUE_OR_UNSUPPORTED(out, v)                                               \
    do {                                                                           \
        if ((v) == 0) { pthread_mutex_unlock(&lock); return NVML_ERROR_NOT_SUPPORTED; } \
        *(out) = (v);                                                              \
    } while (0)

nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, int type, unsigned int *temp) {
    DEVICE_CALL("thresholds", C_TEMP_THRESHOLD);
    switch (type) {
    case 0: VALUE_OR_UNSUPPORTED(temp, g->temp_shutdown); break;
    case 1: VALUE_OR_UNSUPPORTED(temp, g->temp_slowdown); break;
    case 2: VALUE_OR_UNSUPPORTED(temp, g->temp_mem_max); break;
    case 3: VALUE_OR_UNSUPPORTED(temp, g->temp_gpu_max); break;
    default: pthread_mutex_unlock(&lock); return NVML_ERROR_NOT_SUPPORTED;
    }
    DONE;
}

nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, int type, unsigned int *mhz) {
    DEVICE_CALL("max_clocks", C_MAX_CLOCK);
    switch (type) {
    case 0: VALUE_OR_UNSUPPORTED(mhz, g->max_clock_graphics); break;
    case 1: VALUE_OR_UNSUPPORTED(mhz, g->max_clock_sm); break;
    case 2: VALUE_OR_UNSUPPORTED(mhz, g->max_clock_mem); break;
    default: pthread_mutex_unlock(&lock); return NVML_ERROR_NOT_SUPPORTED;
    }
    DONE;
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    DEVICE_CALL("pcie_link", C_PCIE_GEN);
    VALUE_OR_UNSUPPORTED(gen, g->pcie_gen);
    DONE;
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    DEVICE_CALL("pcie_link", C_PCIE_WIDTH);
    VALUE_OR_UNSUPPORTED(width, g->pcie_width);
    DONE;
}

nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value) {
    DEVICE_CALL("pcie_replay", C_PCIE_REPLAY);
    *value = g->pcie_replay;
    DONE;
}

/* No NVLink: NOT_SUPPORTED (the H100 in its PCIe view); a link index past
 * the card's links: INVALID_ARGUMENT. */
nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, int *active) {
    DEVICE_CALL("nvlink", C_NVLINK_STATE);
    if (g->nvlinks == 0) { pthread_mutex_unlock(&lock); return NVML_ERROR_NOT_SUPPORTED; }
    if (link >= g->nvlinks) { pthread_mutex_unlock(&lock); return NVML_ERROR_INVALID_ARGUMENT; }
    *active = 1;
    DONE;
}

/* ---- field values ---- */

typedef struct {
    unsigned int fieldId, scopeId;
    long long timestamp, latencyUsec;
    int valueType;
    int nvmlReturn;
    union { double d; unsigned int ui; unsigned long ul; unsigned long long ull; long long sll; int si; } value;
} nvmlFieldValue_t;

#define VT_UINT 1
#define VT_ULL 3
#define NVML_ERROR_NOT_FOUND 6

/* From 580.82 on the driver numbers some fields as NVML 13 Update 1 does. */
static int v13_field_ids(void) {
    unsigned int major = 0, minor = 0;
    sscanf(st.driver_version, "%u.%u", &major, &minor);
    return major > 580 || (major == 580 && minor >= 82);
}

/* Fills one field: its profile entry (cost, per-field return code), the
 * state's `unsupported` list, then the value. */
static void field_value(gpu_t *g, unsigned int gi, nvmlFieldValue_t *f, int v13) {
    unsigned int id = f->fieldId;
    int entry = -1, reason = -1;
    const char *name = NULL;
    if (id == 82) { entry = F_MEM_TEMP; name = "mem_temp"; }
    else if (id == 74) { entry = F_CLOCK_EVENT; reason = 0; }
    else if (id == 76) { entry = F_CLOCK_EVENT; reason = 1; }
    else if (v13 && id >= 269 && id <= 271) { entry = F_CLOCK_EVENT; reason = 2 + (int)(id - 269); }
    else if (!v13 && id >= 251 && id <= 253) { entry = F_CLOCK_EVENT; reason = 2 + (int)(id - 251); }
    else if (id >= 142 && id <= 145) { entry = F_REMAPPED; name = "remapped"; }
    else if (id == 94) { entry = F_PCIE_REPLAY; name = "pcie_replay"; }
    else if (id == 138 || id == 139) { entry = F_NVLINK_THROUGHPUT; name = "nvlink"; }
    if (reason >= 0) name = "clock_events";
    f->timestamp = (long long)(mono_ns() / 1000);
    f->latencyUsec = 0;
    if (id == 230) {
        /* GPU recovery action: not profiled (unmeasured cost). */
        f->nvmlReturn = unsupported(g, "recovery") ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
        f->valueType = VT_UINT;
        f->value.ui = g->recovery_action;
        return;
    }
    if (entry < 0) { f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; return; }
    spend(entry);
    f->nvmlReturn = prof[entry].rc;
    if (!f->nvmlReturn && unsupported(g, name)) f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
    if (f->nvmlReturn) return;
    f->valueType = VT_UINT;
    if (reason >= 0) {
        f->valueType = VT_ULL;
        f->value.ull = ce_ns[gi][reason];
    } else if (id == 82) {
        if (!g->mem_temp) f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        f->value.ui = g->mem_temp;
    } else if (id == 142) f->value.ui = g->remapped_cor;
    else if (id == 143) f->value.ui = g->remapped_unc;
    else if (id == 144) f->value.ui = g->remapped_pending;
    else if (id == 145) f->value.ui = g->remapped_failure;
    else if (id == 94) f->value.ui = g->pcie_replay;
    else if (g->nvlinks == 0) f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
    else { f->valueType = VT_ULL; f->value.ull = 0; }
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count, nvmlFieldValue_t *values) {
    spend(C_FIELD_VALUES);
    gpu_t *g;
    unsigned int gi = 0;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = lookup(device, &g, &gi);
    if (rc == NVML_SUCCESS && prof[C_FIELD_VALUES].rc) rc = prof[C_FIELD_VALUES].rc;
    if (rc == NVML_SUCCESS && (count <= 0 || !values)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) { pthread_mutex_unlock(&lock); return rc; }
    advance_clock_events();
    int v13 = v13_field_ids();
    for (int i = 0; i < count; i++) field_value(g, gi, &values[i], v13);
    DONE;
}

/* ---- per-process utilization ---- */

typedef struct {
    unsigned long long timeStamp;
    unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil;
} nvmlProcessUtilizationInfo_v1_t;

typedef struct {
    unsigned int version, processSamplesCount;
    unsigned long long lastSeenTimeStamp;
    nvmlProcessUtilizationInfo_v1_t *procUtilArray;
} nvmlProcessesUtilizationInfo_t;

#define PROCS_UTIL_INFO_V1 ((unsigned int)(sizeof(nvmlProcessesUtilizationInfo_t) | (1u << 24)))
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25

/* Processes with a non-zero sample, copied to `out`: the driver only
 * reports those. */
static unsigned int busy_procs(const gpu_t *g, putil_t *out) {
    unsigned int n = 0;
    for (int i = 0; i < g->putil_count; i++)
        if (g->putil[i].sm || g->putil[i].mem) out[n++] = g->putil[i];
    return n;
}

/* The driver's sizing rules for per-process samples: none is NOT_FOUND
 * (idle), no buffer or one too small is INSUFFICIENT_SIZE with the count
 * needed; else the count is set and the caller fills the buffer. */
static nvmlReturn_t sized(unsigned int n, int have_buffer, unsigned int *room) {
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    int fits = have_buffer && *room >= n;
    *room = n;
    return fits ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

#ifndef OLD_DRIVER
nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t device, nvmlProcessesUtilizationInfo_t *info) {
    DEVICE_CALL("procs_util", C_PROCS_UTIL_INFO);
    if (info->version != PROCS_UTIL_INFO_V1) { pthread_mutex_unlock(&lock); return NVML_ERROR_ARGUMENT_VERSION_MISMATCH; }
    putil_t busy[MAX_PROCS];
    unsigned int n = busy_procs(g, busy);
    rc = sized(n, info->procUtilArray != NULL, &info->processSamplesCount);
    if (rc != NVML_SUCCESS) { pthread_mutex_unlock(&lock); return rc; }
    unsigned long long now = mono_ns() / 1000;
    for (unsigned int k = 0; k < n; k++) {
        nvmlProcessUtilizationInfo_v1_t *p = &info->procUtilArray[k];
        memset(p, 0, sizeof *p);
        p->timeStamp = now;
        p->pid = busy[k].pid;
        p->smUtil = busy[k].sm;
        p->memUtil = busy[k].mem;
    }
    DONE;
}
#endif

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count, unsigned long long last_seen) {
    (void)last_seen;
    DEVICE_CALL("procs_util", C_PROC_UTIL);
    putil_t busy[MAX_PROCS];
    unsigned int n = busy_procs(g, busy);
    rc = sized(n, samples != NULL, count);
    if (rc != NVML_SUCCESS) { pthread_mutex_unlock(&lock); return rc; }
    unsigned long long now = mono_ns() / 1000;
    for (unsigned int k = 0; k < n; k++) {
        nvmlProcessUtilizationSample_t *p = &samples[k];
        memset(p, 0, sizeof *p);
        p->pid = busy[k].pid;
        p->timeStamp = now;
        p->smUtil = busy[k].sm;
        p->memUtil = busy[k].mem;
    }
    DONE;
}

/* ---- GPM ---- */
#ifndef OLD_DRIVER
#define GPM_MAGIC 0x47504d31u
#define GPM_METRIC_MAX 210

typedef struct {
    unsigned int magic, dev;
    int filled;
    unsigned long long t_ns;
} gpm_sample_t;

typedef struct {
    unsigned int metricId;
    int nvmlReturn;
    double value;
    struct { char *shortName, *longName, *unit; } metricInfo;
} nvmlGpmMetric_t;

typedef struct {
    unsigned int version, numMetrics;
    gpm_sample_t *sample1, *sample2;
    nvmlGpmMetric_t metrics[GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;

typedef struct { unsigned int version, isSupportedDevice; } nvmlGpmSupport_t;

/* The profile decides where it fixes a value (an Ampere card: 0), else a
 * GPU with GPM values in the state supports GPM. */
static int gpm_supported(const gpu_t *g) {
    if (prof[C_GPM_SUPPORT].has_value) return prof[C_GPM_SUPPORT].value != 0;
    return g->has_gpm && !unsupported(g, "gpm");
}

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support) {
    DEVICE_CALL(NULL, C_GPM_SUPPORT);
    if (support->version != 1) { pthread_mutex_unlock(&lock); return NVML_ERROR_ARGUMENT_VERSION_MISMATCH; }
    support->isSupportedDevice = (unsigned int)gpm_supported(g);
    DONE;
}

nvmlReturn_t nvmlGpmSampleAlloc(gpm_sample_t **sample) {
    spend(C_GPM_ALLOC);
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    gpm_sample_t *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_UNKNOWN;
    s->magic = GPM_MAGIC;
    *sample = s;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleFree(gpm_sample_t *sample) {
    spend(C_GPM_FREE);
    if (!sample || sample->magic != GPM_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;
    free(sample);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, gpm_sample_t *sample) {
    unsigned int idx = 0;
    spend(C_GPM_SAMPLE);
    gpu_t *g;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = lookup(device, &g, &idx);
    if (rc == NVML_SUCCESS && prof[C_GPM_SAMPLE].rc) rc = prof[C_GPM_SAMPLE].rc;
    if (rc == NVML_SUCCESS && !gpm_supported(g)) rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && (!sample || sample->magic != GPM_MAGIC)) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) { pthread_mutex_unlock(&lock); return rc; }
    sample->dev = idx;
    sample->filled = 1;
    sample->t_ns = mono_ns();
    DONE;
}

static char *gpm_unit(unsigned int id) { return id >= 20 ? "MiB/sec" : "%"; }

/* Like the driver: two filled samples of one device, the second taken
 * later; each metric's value is what the state says the GPU did over the
 * interval (the real driver derives it from counter deltas). */
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m) {
    spend(C_GPM_METRICS);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    spend_items(C_GPM_METRICS, m->numMetrics);
    if (m->version != 1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    gpm_sample_t *a = m->sample1, *b = m->sample2;
    if (!a || !b || a->magic != GPM_MAGIC || b->magic != GPM_MAGIC || !a->filled || !b->filled || a->dev != b->dev ||
        b->t_ns <= a->t_ns || m->numMetrics == 0 || m->numMetrics > GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = lookup((nvmlDevice_t)(uintptr_t)(a->dev + 1), &g, NULL);
    if (rc != NVML_SUCCESS) { pthread_mutex_unlock(&lock); return rc; }
    for (unsigned int i = 0; i < m->numMetrics; i++) {
        nvmlGpmMetric_t *x = &m->metrics[i];
        unsigned int id = x->metricId;
        memset(&x->metricInfo, 0, sizeof x->metricInfo);
        if (id >= GPM_IDS || !gpm_names[id]) { x->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; x->value = 0; continue; }
        x->nvmlReturn = NVML_SUCCESS;
        x->value = g->gpm[id];
        x->metricInfo.shortName = (char *)gpm_names[id];
        x->metricInfo.longName = (char *)gpm_names[id];
        x->metricInfo.unit = gpm_unit(id);
    }
    DONE;
}
#endif
