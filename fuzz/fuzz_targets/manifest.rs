//! The boot config and VM manifest a user writes: `bootcfg::BootConfig::parse` on arbitrary
//! text (raw, or assembled from the format's keys and values), then `manifest::Manifest::validate`
//! against an arbitrary machine. A parsed value must be the value written (no silent wrapping),
//! and a manifest that validates must keep every promise the hypervisor relies on.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use hvcore::bootcfg::BootConfig;
use hvcore::manifest::{MAX_VCPUS, Machine, Manifest, VmSpec};
use libfuzzer_sys::fuzz_target;

const KEYS: &[&str] = &[
    "log",
    "exit",
    "fault",
    "host_apic",
    "native_bench",
    "native_target",
    "name",
    "kernel",
    "cmdline",
    "modules",
    "vcpus",
    "ram_mib",
    "timeout_ms",
    "expect",
    "ipiv",
    "apic",
    "hlt",
    "test_hooks",
    "debug_invalid_pid_entry",
    "cpus",
];
const VALUES: &[&str] = &[
    "info",
    "debug",
    "off",
    "trace",
    "debug-port",
    "halt",
    "none",
    "bsp-panic",
    "auto",
    "xapic",
    "x2apic",
    "spin",
    "pass",
    "fail",
    "killed",
    "timeout",
    "on",
    "passthrough",
    "exit",
    "true",
    "false",
    "a",
    "b",
    "hello",
    "0",
    "1",
    "2",
    "4",
    "64",
    "65",
    "4096",
    "0, 1",
    "1,2,3",
    "-1",
    "",
];

/// A config assembled from the format's own pieces, so most lines get past the key lookup.
fn assemble(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut text = String::new();
    for _ in 0..u.int_in_range(0..=24)? {
        match u.int_in_range(0..=9)? {
            0 => text.push_str("[vm]"),
            1 => text.push_str(<&str>::arbitrary(u)?),
            _ => {
                let key = *u.choose(KEYS)?;
                let value = match u.int_in_range(0..=4)? {
                    0 | 1 => (*u.choose(VALUES)?).to_string(),
                    2 => u64::arbitrary(u)?.to_string(),
                    3 => (u32::arbitrary(u)? as u64 + (u.int_in_range(0..=3u64)? << 32)).to_string(),
                    _ => <&str>::arbitrary(u)?.to_string(),
                };
                let pad = if bool::arbitrary(u)? { " " } else { "" };
                text.push_str(&format!("{pad}{key}{pad}={pad}{value}"));
            }
        }
        if u.ratio(1, 8)? {
            text.push_str(" # comment");
        }
        text.push('\n');
    }
    Ok(text)
}

/// The `key = value` lines of each `[vm]` section (the last value of each key) and the global
/// ones, read independently of the parser.
fn sections(text: &str) -> (BTreeMap<&str, &str>, Vec<(usize, BTreeMap<&str, &str>)>) {
    let (mut global, mut vms) = (BTreeMap::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line == "[vm]" {
            vms.push((i + 1, BTreeMap::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            match vms.last_mut() {
                Some((_, keys)) => keys.insert(k.trim(), v.trim()),
                None => global.insert(k.trim(), v.trim()),
            };
        }
    }
    (global, vms)
}

fn check_values(text: &str, cfg: &BootConfig, manifest: &Manifest) {
    let (global, vms) = sections(text);
    if let Some(v) = global.get("native_bench") {
        assert_eq!(v.parse::<u64>().ok(), Some(cfg.native_bench as u64), "native_bench = {v}");
    }
    assert_eq!(vms.len(), manifest.vms.len());
    for ((line, keys), vm) in vms.iter().zip(&manifest.vms) {
        assert_eq!(*line, vm.line);
        let number = |key: &str, got: u64| {
            if let Some(v) = keys.get(key) {
                assert_eq!(v.parse::<u64>().ok(), Some(got), "VM at line {line}: `{key} = {v}` read as {got}");
            }
        };
        number("vcpus", vm.vcpus as u64);
        number("ram_mib", vm.ram_mib as u64);
        number("timeout_ms", vm.timeout_ms);
        if let Some(e) = vm.invalid_pid_entry {
            number("debug_invalid_pid_entry", e as u64);
        }
        for (key, got) in [("name", &vm.name), ("kernel", &vm.kernel)] {
            if let Some(v) = keys.get(key) {
                assert_eq!(v, got);
            }
        }
        if let Some(v) = keys.get("cpus") {
            let want: Vec<u64> = v.split(',').map(|c| c.trim().parse().unwrap()).collect();
            assert_eq!(want, vm.cpus.iter().map(|&c| c as u64).collect::<Vec<_>>(), "cpus = {v}");
        }
        assert!(vm.cmdline.len() <= hvcore::manifest::MAX_CMDLINE);
    }
}

fn check_valid(m: &Manifest, cpus: u32, budget: u64) {
    let mut owner = vec![None; cpus as usize];
    let mut ram = 0u64;
    for (i, vm) in m.vms.iter().enumerate() {
        assert!(!vm.name.is_empty() && vm.name.len() <= 32);
        assert!(vm.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(m.vms[..i].iter().all(|o| o.name != vm.name));
        assert!(!vm.kernel.is_empty());
        assert!((1..=MAX_VCPUS).contains(&vm.vcpus) && vm.vcpus <= cpus);
        assert!(vm.ram_mib >= 4 && vm.ram_mib <= 4096 && vm.ram_mib % 2 == 0);
        assert!((1..=3_600_000).contains(&vm.timeout_ms));
        assert!(vm.invalid_pid_entry.is_none_or(|v| v < vm.vcpus));
        assert_eq!(vm.cpus.len(), vm.vcpus as usize, "every VM is pinned after validation");
        for (v, &c) in vm.cpus.iter().enumerate() {
            assert!(c < cpus);
            assert_eq!(owner[c as usize].replace(i), None, "CPU {c} pinned twice");
            assert_eq!(m.vcpu_on(c), Some((i, v as u32)));
        }
        ram += vm.ram_mib as u64;
    }
    assert!(ram <= budget);
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let (cpus, budget) = (u.int_in_range(0..=130u32)?, u.int_in_range(0..=1u64 << 16)?);
    let text = if bool::arbitrary(u)? { assemble(u)? } else { String::from_utf8_lossy(u.bytes(u.len())?).into_owned() };
    let (cfg, mut manifest) = match BootConfig::parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.lines().count(), "error line {} of {}", e.line, text.lines().count());
            return Ok(());
        }
    };
    check_values(&text, &cfg, &manifest);

    let before: Vec<VmSpec> = manifest.vms.clone();
    let check_boot = |vm: &VmSpec| -> Result<(), String> {
        assert!((4..=4096).contains(&vm.ram_mib) && (1..=MAX_VCPUS).contains(&vm.vcpus));
        if vm.kernel == "missing" { Err("no such file".into()) } else { Ok(()) }
    };
    let machine = Machine { cpus, ram_budget_mib: budget, check_boot: &check_boot };
    match manifest.validate(&machine) {
        Ok(()) => {
            check_valid(&manifest, cpus, budget);
            // Validation only pins: everything else is as parsed.
            for (a, b) in before.iter().zip(&manifest.vms) {
                assert!(a.cpus.is_empty() || a.cpus == b.cpus);
                assert_eq!(VmSpec { cpus: vec![], ..a.clone() }, VmSpec { cpus: vec![], ..b.clone() });
            }
        }
        Err(e) => assert!(e.starts_with("VM "), "{e}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
