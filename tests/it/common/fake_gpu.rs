//! The fake NVML: builds `tests/fake_nvml/fake_nvml.c` into a library per
//! test (a driver profile, the state file beside it), and the state lines
//! the tests write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is per-package scratch space inside target/.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Which build of the fake library.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Every symbol the collector uses.
    Current,
    /// Without the `_v2` memory/fan calls and energy: an old driver.
    Old,
}

/// Compiles `tests/fake_nvml/fake_nvml.c` once per variant.
pub fn fake_nvml_lib(driver: Driver) -> PathBuf {
    static CURRENT: OnceLock<PathBuf> = OnceLock::new();
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name, flags): (_, _, &[&str]) = match driver {
        Driver::Current => (&CURRENT, "libfake_nvml.so", &[]),
        Driver::Old => (&OLD, "libfake_nvml_old.so", &["-DOLD_DRIVER"]),
    };
    cell.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c");
        let out = target_dir().join(name);
        // Several test processes may build at once: compile to a unique
        // name, then rename into place atomically.
        let tmp = target_dir().join(format!("{name}.{}.tmp", std::process::id()));
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(flags)
            .arg("-lpthread")
            .status()
            .expect("a C compiler (cc) is needed to build the fake NVML");
        assert!(status.success(), "building the fake NVML failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
    .clone()
}

/// One fake machine: a private copy of the library and its state file.
pub struct FakeGpus {
    pub dir: TempDir,
    pub lib: PathBuf,
}

impl FakeGpus {
    pub fn new(driver: Driver, state: &str) -> FakeGpus {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(fake_nvml_lib(driver), &lib).unwrap();
        let f = FakeGpus { dir, lib };
        f.set(state);
        f
    }

    /// Replaces the state atomically (write, then rename over).
    pub fn set(&self, state: &str) {
        let tmp = self.dir.path().join("nvml_state.tmp");
        std::fs::write(&tmp, state).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("nvml_state.txt")).unwrap();
    }

    pub fn lib_str(&self) -> String {
        self.lib.to_str().unwrap().to_string()
    }

    /// `state` with the driver profile `name` (tests/fake_nvml/profiles).
    /// The state's own `driver_version` line is dropped: the profile's wins.
    pub fn with_profile(driver: Driver, state: &str, name: &str) -> FakeGpus {
        let state: String = state
            .lines()
            .filter(|l| !l.starts_with("driver_version "))
            .map(|l| format!("{l}\n"))
            .collect();
        FakeGpus::new(driver, &format!("profile {}\n{state}", profile_path(name).display()))
    }

    /// NVML calls made so far, by function, as of the last poll's start.
    pub fn calls(&self) -> std::collections::HashMap<String, u64> {
        std::fs::read_to_string(self.dir.path().join("nvml_calls.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

/// Path of a shipped driver profile.
pub fn profile_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fake_nvml/profiles/{name}.json"))
}

/// How long a test waits for the daemon to get somewhere.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Polls finished as of the fake's last count. The device count is read
/// once when the NVML thread registers for events and once at the start of
/// each poll, and the counts are written at that start: so `count - 2`
/// polls are complete.
pub fn finished(calls: &std::collections::HashMap<String, u64>) -> u64 {
    calls
        .get("nvmlDeviceGetCount_v2")
        .copied()
        .unwrap_or(0)
        .saturating_sub(2)
}

/// Waits until the daemon has finished at least `n` polls (by the fake's
/// own count) and returns the call counts.
pub async fn polls(fake: &FakeGpus, n: u64) -> std::collections::HashMap<String, u64> {
    eventually(&format!("{n} polls"), LIMIT, || async {
        let calls = fake.calls();
        (finished(&calls) >= n).then_some(calls)
    })
    .await
}

/// State text for `n` identical-looking GPUs with distinct identities.
pub fn gpus_state(n: u32) -> String {
    let mut s = format!("driver_version 550.54.15\ncount {n}\n");
    for i in 0..n {
        s += &gpu_lines(i, 40 + i, 60 + i);
    }
    s
}

/// GPM values an H100 answered under a bf16 matmul (tests/fake_nvml/profiles/README.md),
/// as the driver gives them: percent, and MiB/s for PCIe.
pub const GPM_UNDER_LOAD: &str = "graphics:99.6,sm:96.3,occupancy:14.2,tensor:93.4,hmma:93.4,dram:25.7,\
     integer:1.4,fp16:0,fp32:0,fp64:0,imma:0,dfma:0,pcie_tx:8.8,pcie_rx:19.6";

/// Lines for GPU `i` with utilization `util` % and temperature `temp` °C.
pub fn gpu_lines(i: u32, util: u32, temp: u32) -> String {
    format!(
        "{i}.name NVIDIA H100 80GB HBM3\n{i}.uuid GPU-0000000{i}-1111-2222-3333-444444444444\n\
         {i}.pci_bus_id 00000000:0{i}:00.0\n{i}.util_gpu {util}\n{i}.util_mem 25\n\
         {i}.mem_total 85899345920\n{i}.mem_used 21474836480\n{i}.mem_free 64424509440\n\
         {i}.temp {temp}\n{i}.power_mw 250500\n{i}.power_limit_mw 700000\n{i}.fan 30\n\
         {i}.clock_graphics 1755\n{i}.clock_sm 1755\n{i}.clock_mem 2619\n{i}.enc 5\n{i}.dec 10\n\
         {i}.energy_mj 123456789\n{i}.ecc_corrected 2\n{i}.ecc_uncorrected 0\n{i}.throttle 0x4\n\
         {i}.mem_temp 51\n{i}.temp_slowdown 89\n{i}.temp_shutdown 95\n{i}.temp_gpu_max 87\n\
         {i}.temp_mem_max 95\n{i}.max_clock_graphics 1980\n{i}.max_clock_sm 1980\n{i}.max_clock_mem 2619\n\
         {i}.pcie_gen 5\n{i}.pcie_width 16\n{i}.pcie_replay 3\n{i}.remapped_cor 1\n{i}.remapped_unc 0\n\
         {i}.gpm {GPM_UNDER_LOAD}\n"
    )
}
