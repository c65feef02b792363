//! The VM manifest: which guests run, with how many vCPUs, how much RAM, pinned to which
//! physical CPUs. Parsed from `[vm]` sections of the boot config (see `bootcfg`) and validated
//! as a whole before any VM starts: xtask validates it before launching the emulator, and the
//! kernel validates it again against the machine it finds.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::vmx::path_kind::{InterruptPath, IpivSetting, PathRequest};

/// Most vCPUs per VM (the boot-info page and PID tables are sized for it).
pub const MAX_VCPUS: u32 = 64;
pub const DEFAULT_RAM_MIB: u32 = 16;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Longest kernel command line (Linux's x86 limit).
pub const MAX_CMDLINE: usize = 2048;

/// How a VM ended, and what it is expected to end as (tests of failures expect failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmResult {
    Pass,
    Fail,
    Killed,
    Timeout,
}

impl VmResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Killed => "killed",
            Self::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pass, Self::Fail, Self::Killed, Self::Timeout].into_iter().find(|e| e.as_str() == s)
    }
}

/// The APIC mode the guest runtime switches to at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    XApic,
    X2Apic,
}

/// What guest HLT does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HltMode {
    /// No exit: the vCPU halts in the guest; a posted interrupt wakes it with no exit.
    PassThrough,
    /// Exit; the vCPU waits in the hypervisor with interrupts on until an interrupt is posted.
    Exit,
}

/// What brings the hypervisor back when a guest's local APIC timer is due (`apic::timer`): one
/// VM exit per timer interrupt either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerSource {
    /// The VMX-preemption timer (a preemption-timer exit), which the watchdog shares.
    Preemption,
    /// The dedicated core's own local APIC timer in TSC-deadline mode (an external-interrupt
    /// exit); where the host APIC lacks TSC-deadline mode, the preemption timer.
    HostApic,
}

impl TimerSource {
    pub const ALL: [Self; 2] = [Self::Preemption, Self::HostApic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preemption => "preemption",
            Self::HostApic => "host-apic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl ApicMode {
    pub const ALL: [Self; 2] = [Self::XApic, Self::X2Apic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::XApic => "xapic",
            Self::X2Apic => "x2apic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl HltMode {
    pub const ALL: [Self; 2] = [Self::PassThrough, Self::Exit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PassThrough => "passthrough",
            Self::Exit => "exit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

// In HV-SUMMARY by the names the manifest uses.
crate::json::by_name!(VmResult, ApicMode, HltMode, TimerSource);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// Name of a multiboot v1 kernel in the ramdisk: the VM boots it as QEMU's `-kernel` does.
    pub kernel: String,
    /// Or a Linux bzImage in the ramdisk, booted by the Linux x86 boot protocol (`crate::linux`),
    /// with `initrd`, if any.
    pub linux: String,
    pub initrd: String,
    /// The kernel's command line (multiboot `cmdline`, and fw_cfg's).
    pub cmdline: String,
    /// Names of multiboot modules in the ramdisk, in order.
    pub modules: Vec<String>,
    pub vcpus: u32,
    pub ram_mib: u32,
    /// Physical CPU index per vCPU (0 = BSP). Empty in the file means "assign".
    pub cpus: Vec<u32>,
    pub expect: VmResult,
    pub timeout_ms: u64,
    pub ipiv: IpivSetting,
    /// The interrupt path (`interrupt_path = auto | ipiv | posted | virtual-delivery |
    /// injection`): `None` for the best the CPU offers (`vmx::interrupt_path`).
    pub interrupt_path: Option<InterruptPath>,
    pub apic: ApicMode,
    /// CPUID.1:ECX.x2APIC is offered (`x2apic = on | off`; QEMU's `-cpu ...,-x2apic`): off,
    /// the guest cannot leave xAPIC mode (EXTD is a reserved bit).
    pub x2apic: bool,
    pub hlt: HltMode,
    /// What delivers the guest's APIC timer (`timer = preemption | host-apic`).
    pub timer: TimerSource,
    /// Debugging (issue 5's rules test): the PID-pointer table entry of this vCPU is left
    /// invalid, so IPIs to it take the exit path.
    pub invalid_pid_entry: Option<u32>,
    /// Debugging (issue 14): the injection path without a TPR shadow (CR8 exits), as on a CPU
    /// without one; only with `interrupt_path = injection`.
    pub no_tpr_shadow: bool,
    /// QEMU's pc-testdev in the VM's PC (`pc_testdev = on`; `devices::pc_testdev`).
    pub pc_testdev: bool,
    /// The test-support hypercalls (PID_OP) are open to this VM's guest. They let a guest
    /// read and change its vCPUs' posted-interrupt descriptors, so they are off by default.
    pub test_hooks: bool,
    /// Exit budget per vCPU (`crate::budget::ExitBudget`).
    pub max_exits_per_second: u64,
    /// Console budget of the VM (`crate::budget::ConsoleBudget`), bytes per second.
    pub console_bytes_per_second: u64,
    /// Line of the `[vm]` header, for messages.
    pub line: usize,
}

impl VmSpec {
    pub fn new(line: usize) -> Self {
        Self {
            name: String::new(),
            kernel: String::new(),
            linux: String::new(),
            initrd: String::new(),
            cmdline: String::new(),
            modules: Vec::new(),
            vcpus: 1,
            ram_mib: DEFAULT_RAM_MIB,
            cpus: Vec::new(),
            expect: VmResult::Pass,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ipiv: IpivSetting::Auto,
            interrupt_path: None,
            apic: ApicMode::XApic,
            x2apic: true,
            hlt: HltMode::PassThrough,
            timer: TimerSource::Preemption,
            invalid_pid_entry: None,
            no_tpr_shadow: false,
            pc_testdev: false,
            test_hooks: false,
            max_exits_per_second: crate::budget::DEFAULT_MAX_EXITS_PER_S,
            console_bytes_per_second: crate::budget::CONSOLE_BYTES_PER_S,
            line,
        }
    }

    /// Applies one `key = value` line of a `[vm]` section.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let num = |what: &str| value.parse::<u64>().map_err(|_| format!("{what} must be a number, not `{value}`"));
        // Parsed as u32, not cut down from a u64: `vcpus = 4294967298` is an error, not 2.
        let num32 = |what: &str| {
            value.parse::<u32>().map_err(|_| format!("{what} must be a number up to {}, not `{value}`", u32::MAX))
        };
        match key {
            "name" => self.name = value.to_string(),
            "kernel" => self.kernel = value.to_string(),
            "linux" => self.linux = value.to_string(),
            "initrd" => self.initrd = value.to_string(),
            "cmdline" => {
                let v = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
                if v.len() > MAX_CMDLINE {
                    return Err(format!("cmdline is {} bytes, at most {MAX_CMDLINE}", v.len()));
                }
                self.cmdline = v.to_string()
            }
            "modules" => {
                self.modules = value.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()
            }
            "vcpus" => self.vcpus = num32("vcpus")?,
            "ram_mib" => self.ram_mib = num32("ram_mib")?,
            "timeout_ms" => self.timeout_ms = num("timeout_ms")?,
            "expect" => {
                self.expect = VmResult::parse(value)
                    .ok_or_else(|| format!("expect must be pass|fail|killed|timeout, not `{value}`"))?
            }
            "ipiv" => {
                self.ipiv = match value {
                    "auto" => IpivSetting::Auto,
                    "on" => IpivSetting::On,
                    "off" => IpivSetting::Off,
                    _ => return Err(format!("ipiv must be auto|on|off, not `{value}`")),
                }
            }
            "interrupt_path" => {
                self.interrupt_path = match value {
                    "auto" => None,
                    v => Some(InterruptPath::parse(v).ok_or_else(|| {
                        format!("interrupt_path must be auto|ipiv|posted|virtual-delivery|injection, not `{value}`")
                    })?),
                }
            }
            "apic" => {
                self.apic = ApicMode::parse(value).ok_or_else(|| format!("apic must be xapic|x2apic, not `{value}`"))?
            }
            "x2apic" => {
                self.x2apic = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("x2apic must be on|off, not `{value}`")),
                }
            }
            "hlt" => {
                self.hlt =
                    HltMode::parse(value).ok_or_else(|| format!("hlt must be passthrough|exit, not `{value}`"))?
            }
            "timer" => {
                self.timer = TimerSource::parse(value)
                    .ok_or_else(|| format!("timer must be preemption|host-apic, not `{value}`"))?
            }
            "pc_testdev" => {
                self.pc_testdev = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("pc_testdev must be on|off, not `{value}`")),
                }
            }
            "test_hooks" => {
                self.test_hooks = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("test_hooks must be true|false, not `{value}`")),
                }
            }
            "max_exits_per_second" => {
                self.max_exits_per_second = num("max_exits_per_second")?;
                if self.max_exits_per_second == 0 {
                    return Err("max_exits_per_second must be at least 1".to_string());
                }
            }
            "console_bytes_per_second" => {
                let max = crate::budget::MAX_CONSOLE_BYTES_PER_S;
                self.console_bytes_per_second = num("console_bytes_per_second")?;
                if !(1..=max).contains(&self.console_bytes_per_second) {
                    return Err(format!("console_bytes_per_second must be 1..={max}"));
                }
            }
            "debug_invalid_pid_entry" => self.invalid_pid_entry = Some(num32("debug_invalid_pid_entry")?),
            "debug_no_tpr_shadow" => {
                self.no_tpr_shadow = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("debug_no_tpr_shadow must be true|false, not `{value}`")),
                }
            }
            "cpus" => {
                self.cpus = value
                    .split(',')
                    .map(|c| {
                        c.trim().parse::<u32>().map_err(|_| format!("cpus must be a list like `1, 2`, not `{value}`"))
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown VM key `{key}`")),
        }
        Ok(())
    }
}

impl VmSpec {
    /// The `[vm]` section that [`VmSpec::set`] reads back as this VM: the manifest written from
    /// typed values, with one reader (`bootcfg::BootConfig::parse`). Keys at their default are
    /// left out. A value the syntax cannot carry (a newline or `#` anywhere, surrounding blanks
    /// in a name, a `,` in a module name) is an error naming the key.
    pub fn to_section(&self) -> Result<String, String> {
        use core::fmt::Write;
        let d = VmSpec::new(self.line);
        let mut out = String::from("[vm]\n");
        let plain = |key: &str, v: &str| -> Result<(), String> {
            if v.contains(['\n', '\r', '#']) || v.trim() != v || (key == "modules" && v.contains(',')) {
                return Err(format!("{key} = {v:?} cannot be written in a manifest"));
            }
            Ok(())
        };
        let put = |out: &mut String, key: &str, v: &str| -> Result<(), String> {
            plain(key, v)?;
            let _ = writeln!(out, "{key} = {v}");
            Ok(())
        };
        put(&mut out, "name", &self.name)?;
        for (key, v) in [("kernel", &self.kernel), ("linux", &self.linux), ("initrd", &self.initrd)] {
            if !v.is_empty() {
                put(&mut out, key, v)?;
            }
        }
        if !self.modules.is_empty() {
            for m in &self.modules {
                if m.is_empty() {
                    return Err("modules: an empty module name cannot be written".into());
                }
                plain("modules", m)?;
            }
            let _ = writeln!(out, "modules = {}", self.modules.join(", "));
        }
        let num = |v: u64| alloc::format!("{v}");
        let on_off = |b: bool| if b { "on" } else { "off" };
        let pairs: [(&str, bool, String); 17] = [
            ("vcpus", self.vcpus != d.vcpus, num(self.vcpus as u64)),
            ("ram_mib", self.ram_mib != d.ram_mib, num(self.ram_mib as u64)),
            ("cpus", !self.cpus.is_empty(), self.cpus.iter().map(|c| num(*c as u64)).collect::<Vec<_>>().join(", ")),
            ("expect", self.expect != d.expect, self.expect.as_str().into()),
            ("timeout_ms", self.timeout_ms != d.timeout_ms, num(self.timeout_ms)),
            ("ipiv", self.ipiv != d.ipiv, self.ipiv.as_str().into()),
            (
                "interrupt_path",
                self.interrupt_path.is_some(),
                self.interrupt_path.map_or("auto", |p| p.as_str()).into(),
            ),
            ("apic", self.apic != d.apic, self.apic.as_str().into()),
            ("x2apic", self.x2apic != d.x2apic, on_off(self.x2apic).into()),
            ("hlt", self.hlt != d.hlt, self.hlt.as_str().into()),
            ("timer", self.timer != d.timer, self.timer.as_str().into()),
            ("pc_testdev", self.pc_testdev != d.pc_testdev, on_off(self.pc_testdev).into()),
            ("test_hooks", self.test_hooks != d.test_hooks, alloc::format!("{}", self.test_hooks)),
            (
                "max_exits_per_second",
                self.max_exits_per_second != d.max_exits_per_second,
                num(self.max_exits_per_second),
            ),
            (
                "console_bytes_per_second",
                self.console_bytes_per_second != d.console_bytes_per_second,
                num(self.console_bytes_per_second),
            ),
            (
                "debug_invalid_pid_entry",
                self.invalid_pid_entry.is_some(),
                num(self.invalid_pid_entry.unwrap_or(0) as u64),
            ),
            ("debug_no_tpr_shadow", self.no_tpr_shadow != d.no_tpr_shadow, alloc::format!("{}", self.no_tpr_shadow)),
        ];
        for (key, differs, v) in pairs {
            if differs {
                put(&mut out, key, &v)?;
            }
        }
        if !self.cmdline.is_empty() {
            if self.cmdline.contains(['\n', '\r', '#']) || self.cmdline.len() > MAX_CMDLINE {
                return Err(format!("cmdline = {:?} cannot be written in a manifest", self.cmdline));
            }
            // Quoted: the reader keeps what is inside the quotes, blanks at the ends included.
            let _ = writeln!(out, "cmdline = \"{}\"", self.cmdline);
        }
        Ok(out)
    }
}

impl VmSpec {
    /// `ipiv` and `interrupt_path` as the one request `vmx::interrupt_path::choose` takes
    /// (`Manifest::validate` refused the combinations that contradict each other).
    pub fn path_request(&self) -> PathRequest {
        match (self.interrupt_path, self.ipiv) {
            (Some(path), _) => PathRequest::Exact(path),
            (None, IpivSetting::On) => PathRequest::Exact(InterruptPath::Ipiv),
            (None, setting) => PathRequest::Best { ipiv: setting != IpivSetting::Off },
        }
    }

    /// The multiboot command line: the kernel's file name, then `cmdline`, as QEMU's `-kernel`
    /// and GRUB give it (kernels such as kvm-unit-tests' take the first word as argv[0]).
    pub fn multiboot_cmdline(&self) -> String {
        if self.cmdline.is_empty() { self.kernel.clone() } else { format!("{} {}", self.kernel, self.cmdline) }
    }

    /// Checks that the VM's boot files are in `files` (the ramdisk) and load into its RAM.
    pub fn check_boot<'a>(&self, files: &dyn Fn(&str) -> Option<&'a [u8]>) -> Result<(), String> {
        let ram = self.ram_mib as u64 * 1024 * 1024;
        if !self.linux.is_empty() {
            let img = files(&self.linux).ok_or_else(|| format!("linux `{}`: not in the ramdisk", self.linux))?;
            let plan = crate::linux::LoadPlan::new(img, ram).map_err(|e| format!("linux `{}`: {e}", self.linux))?;
            if plan.cmdline_size <= self.cmdline.len() as u64 {
                return Err(format!(
                    "linux `{}`: the command line is longer than its {} bytes",
                    self.linux, plan.cmdline_size
                ));
            }
            if !self.initrd.is_empty() {
                let data =
                    files(&self.initrd).ok_or_else(|| format!("initrd `{}`: not in the ramdisk", self.initrd))?;
                plan.initrd_addr(data.len() as u64, ram).map_err(|e| format!("initrd `{}`: {e}", self.initrd))?;
            }
            return Ok(());
        }
        let img = files(&self.kernel).ok_or_else(|| format!("kernel `{}`: not in the ramdisk", self.kernel))?;
        let plan =
            crate::multiboot::load::LoadPlan::new(img, ram).map_err(|e| format!("kernel `{}`: {e}", self.kernel))?;
        let mut modules = Vec::new();
        for m in &self.modules {
            let data = files(m).ok_or_else(|| format!("module `{m}`: not in the ramdisk"))?;
            modules.push(crate::multiboot::load::Module { data, string: m });
        }
        crate::multiboot::load::check_fits(&plan, ram, &self.multiboot_cmdline(), &modules)
            .map_err(|e| format!("kernel `{}`: {e}", self.kernel))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub vms: Vec<VmSpec>,
}

/// What the manifest is checked against.
pub struct Machine<'a> {
    /// CPUs that can run vCPUs (indices 0..cpus).
    pub cpus: u32,
    /// MiB of memory available for guest RAM, all VMs together.
    pub ram_budget_mib: u64,
    /// Checks that a VM's boot files exist and fit its RAM (usually [`VmSpec::check_boot`]).
    pub check_boot: &'a dyn Fn(&VmSpec) -> Result<(), String>,
}

impl Manifest {
    /// Checks everything that can be checked before a VM starts, and pins unpinned VMs to the
    /// lowest free CPUs. The first problem is the error, naming the VM.
    pub fn validate(&mut self, m: &Machine<'_>) -> Result<(), String> {
        let mut used: Vec<Option<&str>> = alloc::vec![None; m.cpus as usize];
        let mut total_ram = 0u64;
        for (i, vm) in self.vms.iter().enumerate() {
            let who = if vm.name.is_empty() {
                format!("VM #{} (line {})", i + 1, vm.line)
            } else {
                format!("VM `{}`", vm.name)
            };
            if vm.name.is_empty() {
                return Err(format!("{who}: needs a name"));
            }
            if !vm.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || vm.name.len() > 32 {
                return Err(format!("{who}: name must be 1-32 of A-Z a-z 0-9 - _"));
            }
            if self.vms[..i].iter().any(|o| o.name == vm.name) {
                return Err(format!("{who}: name used twice"));
            }
            match (vm.ipiv, vm.interrupt_path) {
                (IpivSetting::On, Some(p)) if p != InterruptPath::Ipiv => {
                    return Err(format!("{who}: ipiv = on, but interrupt_path = {p}"));
                }
                (IpivSetting::Off, Some(InterruptPath::Ipiv)) => {
                    return Err(format!("{who}: ipiv = off, but interrupt_path = ipiv"));
                }
                _ => {}
            }
            if vm.apic == ApicMode::X2Apic && !vm.x2apic {
                return Err(format!("{who}: apic = x2apic, but x2apic = off hides x2APIC mode"));
            }
            if vm.no_tpr_shadow && vm.interrupt_path != Some(InterruptPath::Injection) {
                return Err(format!(
                    "{who}: debug_no_tpr_shadow needs interrupt_path = injection (every other path uses the TPR shadow)"
                ));
            }
            match (vm.kernel.is_empty(), vm.linux.is_empty()) {
                (true, true) => return Err(format!("{who}: needs a kernel (multiboot) or linux (bzImage)")),
                (false, false) => return Err(format!("{who}: has both kernel and linux; give one")),
                _ => {}
            }
            if !vm.linux.is_empty() && !vm.modules.is_empty() {
                return Err(format!("{who}: modules are for multiboot kernels; Linux takes an initrd"));
            }
            if vm.linux.is_empty() && !vm.initrd.is_empty() {
                return Err(format!("{who}: initrd is for linux; a multiboot kernel takes modules"));
            }
            if vm.kernel.is_empty() && vm.linux.is_empty() {
                return Err(format!("{who}: needs a kernel"));
            }
            if vm.vcpus == 0 || vm.vcpus > MAX_VCPUS {
                return Err(format!("{who}: vcpus must be 1..={MAX_VCPUS}"));
            }
            if vm.vcpus > m.cpus {
                return Err(format!("{who}: {} vCPUs but the machine has {} CPUs", vm.vcpus, m.cpus));
            }
            if vm.ram_mib < 4 || vm.ram_mib % 2 != 0 || vm.ram_mib > 4096 {
                return Err(format!("{who}: ram_mib must be an even number from 4 to 4096, not {}", vm.ram_mib));
            }
            if vm.timeout_ms == 0 || vm.timeout_ms > 3_600_000 {
                return Err(format!("{who}: timeout_ms must be 1..=3600000"));
            }
            if vm.invalid_pid_entry.is_some_and(|v| v >= vm.vcpus) {
                return Err(format!("{who}: debug_invalid_pid_entry names a vCPU it does not have"));
            }
            if !vm.cpus.is_empty() && vm.cpus.len() != vm.vcpus as usize {
                return Err(format!("{who}: {} vCPUs but {} CPUs listed in cpus", vm.vcpus, vm.cpus.len()));
            }
            for &c in &vm.cpus {
                if c >= m.cpus {
                    return Err(format!("{who}: CPU {c} does not exist (the machine has {} CPUs)", m.cpus));
                }
                if let Some(other) = used[c as usize] {
                    return Err(format!("{who}: CPU {c} is already pinned to VM `{other}`"));
                }
                used[c as usize] = Some(&vm.name);
            }
            total_ram += vm.ram_mib as u64;
            if total_ram > m.ram_budget_mib {
                return Err(format!(
                    "{who}: guest RAM adds up to {total_ram} MiB, more than the {} MiB available",
                    m.ram_budget_mib
                ));
            }
            (m.check_boot)(vm).map_err(|e| format!("{who}: {e}"))?;
        }
        // Pin the rest to the lowest free CPUs, in order.
        let mut free = (0..m.cpus).filter(|&c| used[c as usize].is_none()).collect::<Vec<_>>().into_iter();
        for vm in self.vms.iter_mut().filter(|v| v.cpus.is_empty()) {
            let cpus: Vec<u32> = free.by_ref().take(vm.vcpus as usize).collect();
            if cpus.len() != vm.vcpus as usize {
                return Err(format!("VM `{}`: not enough free CPUs for {} vCPUs", vm.name, vm.vcpus));
            }
            vm.cpus = cpus;
        }
        Ok(())
    }

    /// The VM and vCPU index pinned to physical CPU `cpu`.
    pub fn vcpu_on(&self, cpu: u32) -> Option<(usize, u32)> {
        self.vms.iter().enumerate().find_map(|(i, vm)| vm.cpus.iter().position(|&c| c == cpu).map(|v| (i, v as u32)))
    }
}

#[cfg(test)]
mod tests;
