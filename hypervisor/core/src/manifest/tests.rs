use super::*;
use alloc::vec;

fn vm(name: &str, vcpus: u32, cpus: &[u32]) -> VmSpec {
    VmSpec { name: name.into(), kernel: "hello".into(), vcpus, cpus: cpus.to_vec(), ..VmSpec::new(1) }
}

fn ok_boot(_: &VmSpec) -> Result<(), String> {
    Ok(())
}

fn machine(cpus: u32) -> Machine<'static> {
    Machine { cpus, ram_budget_mib: 256, check_boot: &ok_boot }
}

#[test]
fn unpinned_vms_get_the_lowest_free_cpus() {
    let mut m = Manifest { vms: vec![vm("a", 2, &[]), vm("b", 1, &[0]), vm("c", 1, &[])] };
    m.validate(&machine(4)).unwrap();
    assert_eq!(m.vms[0].cpus, vec![1, 2]);
    assert_eq!(m.vms[1].cpus, vec![0]);
    assert_eq!(m.vms[2].cpus, vec![3]);
    assert_eq!(m.vcpu_on(2), Some((0, 1)));
    assert_eq!(m.vcpu_on(0), Some((1, 0)));
}

#[test]
fn overlapping_cpus_are_refused_naming_both_vms() {
    let mut m = Manifest { vms: vec![vm("a", 2, &[0, 1]), vm("b", 2, &[1, 2])] };
    let e = m.validate(&machine(4)).unwrap_err();
    assert!(e.contains("CPU 1 is already pinned to VM `a`") && e.contains("`b`"), "{e}");
}

#[test]
fn more_vcpus_than_cpus_is_refused() {
    let mut m = Manifest { vms: vec![vm("a", 5, &[])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("5 vCPUs but the machine has 4 CPUs"));
    let mut m = Manifest { vms: vec![vm("a", 3, &[]), vm("b", 2, &[])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("not enough free CPUs"));
    let mut m = Manifest { vms: vec![vm("a", 2, &[0])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("2 vCPUs but 1 CPUs listed"));
    let mut m = Manifest { vms: vec![vm("a", 1, &[7])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("CPU 7 does not exist"));
}

#[test]
fn ram_that_does_not_fit_is_refused() {
    let mut a = vm("a", 1, &[]);
    a.ram_mib = 200;
    let mut b = vm("b", 1, &[]);
    b.ram_mib = 100;
    let e = Manifest { vms: vec![a.clone(), b] }.validate(&machine(4)).unwrap_err();
    assert!(e.contains("300 MiB, more than the 256 MiB"), "{e}");
    a.ram_mib = 3;
    assert!(Manifest { vms: vec![a] }.validate(&machine(4)).unwrap_err().contains("ram_mib must be an even number"));
}

#[test]
fn names_kernels_and_limits() {
    let mut m = Manifest { vms: vec![vm("a", 1, &[]), vm("a", 1, &[])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("name used twice"));
    let mut m = Manifest { vms: vec![vm("bad name", 1, &[])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("name must be"));
    let mut m = Manifest { vms: vec![vm("", 1, &[])] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("needs a name"));
    let bad_elf = |v: &VmSpec| -> Result<(), String> { v.check_boot(&|_| Some(b"not an ELF file".as_slice())) };
    let mut m = Manifest { vms: vec![vm("a", 1, &[])] };
    let e = m.validate(&Machine { cpus: 4, ram_budget_mib: 64, check_boot: &bad_elf }).unwrap_err();
    assert!(e.starts_with("VM `a`: kernel `hello`: no multiboot header"), "{e}");
}

#[test]
fn a_vm_boots_a_kernel() {
    let kernel = |name: &str| VmSpec { name: name.into(), kernel: "k".into(), ..VmSpec::new(1) };
    let mut m = Manifest { vms: vec![VmSpec { name: "a".into(), ..VmSpec::new(1) }] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("needs a kernel"));
    assert!(VmSpec::new(1).set("image", "hello").unwrap_err().contains("unknown VM key `image`"));
    // Files are looked up by name; a missing module is named.
    let v = VmSpec { modules: vec!["initrd".into()], ..kernel("a") };
    let none = |_: &str| -> Option<&[u8]> { None };
    assert!(v.check_boot(&none).unwrap_err().contains("kernel `k`: not in the ramdisk"));
    let not_multiboot = |_: &str| Some(&[0u8; 64][..]);
    assert!(v.check_boot(&not_multiboot).unwrap_err().contains("no multiboot header"));
}

#[test]
fn kernel_keys_parse() {
    let mut v = VmSpec::new(1);
    v.set("kernel", "smp-boot").unwrap();
    v.set("cmdline", "\"console=ttyS0 exit=3\"").unwrap();
    v.set("modules", "a, b,").unwrap();
    assert_eq!((v.kernel.as_str(), v.cmdline.as_str()), ("smp-boot", "console=ttyS0 exit=3"));
    assert_eq!(v.modules, vec!["a".to_string(), "b".to_string()]);
    assert!(v.set("cmdline", &"x".repeat(MAX_CMDLINE + 1)).unwrap_err().contains("at most"));
}

#[test]
fn keys_are_checked_when_set() {
    let mut v = VmSpec::new(3);
    v.set("cpus", "1, 2").unwrap();
    assert_eq!(v.cpus, vec![1, 2]);
    v.set("expect", "killed").unwrap();
    assert_eq!(v.expect, VmResult::Killed);
    assert!(v.set("vcpus", "two").unwrap_err().contains("must be a number"));
    assert!(v.set("expect", "maybe").is_err());
    assert!(v.set("cpu", "1").unwrap_err().contains("unknown VM key `cpu`"));
}

#[test]
fn interrupt_options() {
    let mut v = VmSpec::new(1);
    assert_eq!((v.ipiv, v.apic, v.hlt), (IpivSetting::Auto, ApicMode::XApic, HltMode::PassThrough));
    v.set("ipiv", "off").unwrap();
    v.set("apic", "x2apic").unwrap();
    v.set("hlt", "exit").unwrap();
    assert_eq!((v.ipiv, v.apic, v.hlt), (IpivSetting::Off, ApicMode::X2Apic, HltMode::Exit));
    assert!(v.set("ipiv", "yes").unwrap_err().contains("auto|on|off"));
    assert!(v.set("apic", "x3apic").is_err());
    assert!(v.set("hlt", "spin").is_err());
    let mut a = vm("a", 2, &[]);
    a.invalid_pid_entry = Some(2);
    assert!(Manifest { vms: vec![a] }.validate(&machine(4)).unwrap_err().contains("debug_invalid_pid_entry"));
}

#[test]
fn test_hooks_are_off_unless_asked_for() {
    let mut a = VmSpec::new(1);
    assert!(!a.test_hooks);
    a.set("test_hooks", "true").unwrap();
    assert!(a.test_hooks);
    assert!(a.set("test_hooks", "yes").unwrap_err().contains("true|false"));
}

#[test]
fn exit_budget_defaults_and_bounds() {
    let mut a = VmSpec::new(1);
    assert_eq!(a.max_exits_per_second, crate::budget::DEFAULT_MAX_EXITS_PER_S);
    a.set("max_exits_per_second", "5000").unwrap();
    assert_eq!(a.max_exits_per_second, 5000);
    assert!(a.set("max_exits_per_second", "0").is_err());
    assert!(a.set("max_exits_per_second", "many").is_err());
    assert_eq!(a.console_bytes_per_second, crate::budget::CONSOLE_BYTES_PER_S);
    a.set("console_bytes_per_second", "65536").unwrap();
    assert_eq!(a.console_bytes_per_second, 65536);
    assert!(a.set("console_bytes_per_second", "0").unwrap_err().contains("1..="));
    assert!(a.set("console_bytes_per_second", "999999999").is_err());
}

/// Found by `cargo xtask fuzz --target manifest`: u32 keys were parsed as u64 and cut down, so
/// `vcpus = 4294967297` gave a VM of 1 vCPU that passed validation.
#[test]
fn u32_keys_out_of_range_are_errors_not_wrapped() {
    let mut v = VmSpec::new(1);
    for key in ["vcpus", "ram_mib", "debug_invalid_pid_entry"] {
        let e = v.set(key, "4294967297").unwrap_err();
        assert!(e.contains(&format!("{key} must be a number up to 4294967295")), "{e}");
        v.set(key, "4294967295").unwrap();
    }
    assert_eq!((v.vcpus, v.ram_mib, v.invalid_pid_entry), (u32::MAX, u32::MAX, Some(u32::MAX)));
    assert!(v.set("vcpus", "-1").is_err());
    // timeout_ms is a u64 and takes the full range.
    v.set("timeout_ms", "4294967297").unwrap();
    assert_eq!(v.timeout_ms, 4_294_967_297);
}

#[test]
fn timer_source_key() {
    let mut v = VmSpec::new(1);
    assert_eq!(v.timer, TimerSource::Preemption);
    v.set("timer", "host-apic").unwrap();
    assert_eq!(v.timer, TimerSource::HostApic);
    assert!(v.set("timer", "pit").unwrap_err().contains("preemption|host-apic"));
}

#[test]
fn a_vm_boots_a_multiboot_kernel_or_linux() {
    let base = || VmSpec { name: "a".into(), ..VmSpec::new(1) };
    let mut m = Manifest { vms: vec![VmSpec { kernel: "k".into(), linux: "l".into(), ..base() }] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("both kernel and linux"));
    let mut m = Manifest { vms: vec![VmSpec { linux: "l".into(), modules: vec!["m".into()], ..base() }] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("Linux takes an initrd"));
    let mut m = Manifest { vms: vec![VmSpec { kernel: "k".into(), initrd: "i".into(), ..base() }] };
    assert!(m.validate(&machine(4)).unwrap_err().contains("initrd is for linux"));
    let mut m = Manifest { vms: vec![VmSpec { linux: "l".into(), initrd: "i".into(), ..base() }] };
    assert!(m.validate(&machine(4)).is_ok());
    // Files are checked as bzImages.
    let v = VmSpec { linux: "l".into(), ..base() };
    let not_linux = |_: &str| -> Option<&[u8]> { Some(b"not a kernel".as_slice()) };
    assert!(v.check_boot(&not_linux).unwrap_err().starts_with("linux `l`: "));
    let none = |_: &str| -> Option<&[u8]> { None };
    assert!(v.check_boot(&none).unwrap_err().contains("not in the ramdisk"));
}

#[test]
fn interrupt_path_key() {
    let mut v = vm("a", 1, &[]);
    v.set("interrupt_path", "virtual-delivery").unwrap();
    assert_eq!(v.interrupt_path, Some(InterruptPath::VirtualDelivery));
    v.set("interrupt_path", "auto").unwrap();
    assert_eq!(v.interrupt_path, None);
    assert!(v.set("interrupt_path", "apicv").unwrap_err().contains("auto|ipiv|posted|virtual-delivery|injection"));
    let mut on = vm("a", 1, &[]);
    on.set("ipiv", "on").unwrap();
    on.set("interrupt_path", "injection").unwrap();
    let e = Manifest { vms: vec![on] }.validate(&machine(4)).unwrap_err();
    assert!(e.contains("ipiv = on, but interrupt_path = injection"), "{e}");
    // What choose() is asked, from the two keys.
    let mut v = vm("a", 1, &[]);
    assert_eq!(v.path_request(), PathRequest::Best { ipiv: true });
    v.set("ipiv", "off").unwrap();
    assert_eq!(v.path_request(), PathRequest::Best { ipiv: false });
    v.set("interrupt_path", "posted").unwrap();
    assert_eq!(v.path_request(), PathRequest::Exact(InterruptPath::Posted));
    v.set("ipiv", "on").unwrap();
    v.set("interrupt_path", "auto").unwrap();
    assert_eq!(v.path_request(), PathRequest::Exact(InterruptPath::Ipiv));
    let mut cr8 = vm("a", 1, &[]);
    cr8.set("debug_no_tpr_shadow", "true").unwrap();
    let e = Manifest { vms: vec![cr8.clone()] }.validate(&machine(4)).unwrap_err();
    assert!(e.contains("debug_no_tpr_shadow needs interrupt_path = injection"), "{e}");
    cr8.set("interrupt_path", "injection").unwrap();
    Manifest { vms: vec![cr8] }.validate(&machine(4)).unwrap();
    let mut off = vm("a", 1, &[]);
    off.set("ipiv", "off").unwrap();
    off.set("interrupt_path", "ipiv").unwrap();
    assert!(Manifest { vms: vec![off] }.validate(&machine(4)).is_err());
}

/// A VM written by `to_section` reads back as itself, through the one reader.
mod written_sections {
    use super::*;
    use crate::bootcfg::BootConfig;
    use alloc::string::String;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._/-]{0,12}"
    }

    prop_compose! {
        fn spec()(
            name in word(), kernel in word(), linux in prop::option::of(word()), initrd in prop::option::of(word()),
            modules in prop::collection::vec(word(), 0..3), cmdline in "[ -\"$-~]{0,40}",
            vcpus in 1u32..9, ram_mib in 1u32..5000, cpus in prop::collection::vec(0u32..300, 0..4),
            expect in 0usize..4, timeout_ms in any::<u64>(), ipiv in 0usize..3, path in 0usize..5,
            x2apic_mode in any::<bool>(), x2apic in any::<bool>(), hlt_exit in any::<bool>(), host_timer in any::<bool>(),
            pc_testdev in any::<bool>(), test_hooks in any::<bool>(), max_exits in 1u64..u64::MAX,
            console in 1u64..=crate::budget::MAX_CONSOLE_BYTES_PER_S, invalid in prop::option::of(0u32..8),
            no_tpr in any::<bool>(),
        ) -> VmSpec {
            let mut v = VmSpec::new(1);
            v.name = name;
            v.kernel = kernel;
            v.linux = linux.unwrap_or_default();
            v.initrd = initrd.unwrap_or_default();
            v.modules = modules;
            v.cmdline = cmdline;
            v.vcpus = vcpus;
            v.ram_mib = ram_mib;
            v.cpus = cpus;
            v.expect = [VmResult::Pass, VmResult::Fail, VmResult::Killed, VmResult::Timeout][expect];
            v.timeout_ms = timeout_ms;
            v.ipiv = [IpivSetting::Auto, IpivSetting::On, IpivSetting::Off][ipiv];
            v.interrupt_path = [None, Some(InterruptPath::Ipiv), Some(InterruptPath::Posted),
                Some(InterruptPath::VirtualDelivery), Some(InterruptPath::Injection)][path];
            v.apic = if x2apic_mode { ApicMode::X2Apic } else { ApicMode::XApic };
            v.x2apic = x2apic;
            v.hlt = if hlt_exit { HltMode::Exit } else { HltMode::PassThrough };
            v.timer = if host_timer { TimerSource::HostApic } else { TimerSource::Preemption };
            v.pc_testdev = pc_testdev;
            v.test_hooks = test_hooks;
            v.max_exits_per_second = max_exits;
            v.console_bytes_per_second = console;
            v.invalid_pid_entry = invalid;
            v.no_tpr_shadow = no_tpr;
            v
        }
    }

    proptest! {
        #[test]
        fn read_back_as_written(v in spec()) {
            let text = v.to_section().unwrap();
            let (_, m) = BootConfig::parse(&text).map_err(|e| TestCaseError::fail(alloc::format!("{e:?}\n{text}")))?;
            prop_assert_eq!(&m.vms, &alloc::vec![v], "{}", text);
        }
    }

    #[test]
    fn what_the_syntax_cannot_carry_is_refused() {
        let mut v = VmSpec::new(1);
        v.name = "a".into();
        v.cmdline = "x # y".into();
        assert!(v.to_section().unwrap_err().contains("cmdline"));
        v.cmdline.clear();
        v.modules = alloc::vec!["a,b".into()];
        assert!(v.to_section().unwrap_err().contains("modules"));
        v.modules.clear();
        v.kernel = " k".into();
        assert!(v.to_section().unwrap_err().contains("kernel"));
    }
}
