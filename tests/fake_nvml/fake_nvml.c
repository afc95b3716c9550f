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
 *   init_error N          nvmlInit_v2 returns N (e.g. 9 = DRIVER_NOT_LOADED)
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
 *   <i>.xid 79,13,79                           every critical XID ever raised;
 *                                              each is delivered once by
 *                                              nvmlEventSetWait_v2
 *   <i>.procs pid:bytes:name;pid:bytes:name    running compute processes
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
    X(C_EVENT_WAIT, "nvmlEventSetWait_v2")

#define AS_ENUM(id, name) id,
#define AS_NAME(id, name) name,
enum { CALLS(AS_ENUM) C_COUNT_OF };
static const char *call_names[] = {CALLS(AS_NAME)};

typedef struct {
    int rc;
    double cost_us;
    int has_value;
    double value;
} prof_t;

static prof_t prof[C_COUNT_OF];
static unsigned long long calls[C_COUNT_OF];
static char prof_path[4096];
static char prof_driver_version[80];

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
} gpu_t;

typedef struct {
    int init_error;
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
        if ((v = strstr(open, "\"value\"")) && (v = strchr(v, ':'))) {
            prof[c].has_value = 1;
            prof[c].value = strtod(v + 1, NULL);
        }
        *close = '}';
    }
}

/* Counts a call and spends its profiled cost on the CPU. */
static void spend(int c) {
    __atomic_add_fetch(&calls[c], 1, __ATOMIC_RELAXED);
    double us = prof[c].cost_us;
    if (us <= 0) return;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1e6 + (t.tv_nsec - t0.tv_nsec) / 1e3 < us);
}

/* Writes the call counts beside the state file. Called with `lock` held. */
static void write_counts(void);

/* Re-reads the state file when it changed. Called with `lock` held. */
static void refresh(void) {
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
    last_stat = s;
    loaded = 1;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < MAX_GPUS; i++) st.gpu[i].fans = 1;
    const char *env_profile = getenv("FAKE_NVML_PROFILE");
    char want_profile[4096] = "";
    if (env_profile) snprintf(want_profile, sizeof want_profile, "%s", env_profile);
    int version_set = 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        *sp = 0;
        char *key = line, *v = sp + 1;
        if (!strcmp(key, "init_error")) st.init_error = (int)num(v);
        else if (!strcmp(key, "profile")) snprintf(want_profile, sizeof want_profile, "%s", v);
        else if (!strcmp(key, "driver_version")) {
            snprintf(st.driver_version, sizeof st.driver_version, "%s", v);
            version_set = 1;
        }
        else if (!strcmp(key, "count")) st.count = (unsigned int)num(v) > MAX_GPUS ? MAX_GPUS : (unsigned int)num(v);
        else {
            char *dot = strchr(key, '.');
            if (!dot) continue;
            unsigned int i = (unsigned int)strtoul(key, NULL, 10);
            if (i >= MAX_GPUS) continue;
            gpu_t *g = &st.gpu[i];
            const char *k = dot + 1;
#define U(field) else if (!strcmp(k, #field)) g->field = num(v)
            if (!strcmp(k, "name")) snprintf(g->name, sizeof g->name, "%s", v);
            else if (!strcmp(k, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", v);
            else if (!strcmp(k, "pci_bus_id")) snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%s", v);
            else if (!strcmp(k, "unsupported")) snprintf(g->unsupported, sizeof g->unsupported, ",%s,", v);
            else if (!strcmp(k, "xid")) parse_xids(g, v);
            else if (!strcmp(k, "procs")) parse_procs(g, v);
            else if (!strcmp(k, "lost")) g->lost = (int)num(v);
            U(util_gpu); U(util_mem); U(temp); U(fan); U(fans); U(enc); U(dec);
            U(mem_total); U(mem_used); U(mem_free);
            U(power_mw); U(power_limit_mw);
            U(clock_graphics); U(clock_sm); U(clock_mem);
            U(energy_mj); U(ecc_corrected); U(ecc_uncorrected); U(throttle); U(hang_ms);
#undef U
        }
    }
    fclose(f);
    if (strcmp(want_profile, prof_path) != 0) load_profile(want_profile);
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
    copy_str(version, len, "12.550.54.15");
    return NVML_SUCCESS;
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
