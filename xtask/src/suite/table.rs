//! Every test of `cargo xtask test`, registered once, in the order they run.

use anyhow::bail;
use std::process::Command;

use super::boots::{cases, hostile_cases, nested_cases, pc_cases};
use super::entry::{Test, own};
use super::scenarios::*;
use crate::platform::spec::Platform;

/// The suite: Bochs runs on `bochs_model` (the `cpu-model-*` tests on every model), the host
/// unit tests first where `unit`.
pub fn all(bochs_model: &str, unit: bool) -> Vec<Test> {
    let model = bochs_model.to_string();
    let mut t = Vec::new();
    if unit {
        t.push(own("host-unit-tests", || {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            if Command::new(cargo).arg("test").status()?.success() { Ok(()) } else { bail!("cargo test failed") }
        }));
    }
    t.push(own("xtask-refuses-bad-manifest", refuses_bad_manifest_before_launch));
    // Every parser fed by a guest or a user, briefly (docs/fuzzing.md; `cargo xtask fuzz` for long runs).
    t.push(own("fuzz-smoke", crate::fuzz::smoke));
    for mut case in cases().into_iter().chain(pc_cases()).chain(hostile_cases()) {
        if case.args.platform == Platform::Bochs {
            case.args.cpu_model = model.clone();
        }
        t.push(Test::Boot(case));
    }
    // The hostile guests again where the hypervisor models the APIC itself and injects (no
    // APIC-register virtualization or virtual-interrupt delivery at all): a CPU model of that
    // generation rather than the path forced, so the processor virtualizes nothing more.
    for mut case in hostile_cases() {
        case.args.cpu_model = INJECTION_MODEL.into();
        case.name += "-injection";
        t.push(Test::Boot(case));
    }
    // Every guest test as a multiboot kernel in both APIC modes on every interrupt path
    // (ipiv-rules needs IPIv: its own cases above).
    for apic in ["xapic", "x2apic"] {
        for (label, path) in MATRIX_PATHS {
            for (i, list) in MATRIX_BATCHES.iter().enumerate() {
                let m = model.clone();
                t.push(own(format!("guest-matrix-{apic}-{label}-{i}"), move || {
                    matrix_batch(list, apic, label, path, &m)
                }));
            }
        }
    }
    t.push(own("kernel-fixture-bochs", || kernel_fixture(Platform::Bochs)));
    t.push(own("kernel-fixture-qemu", || kernel_fixture(Platform::Qemu)));
    t.push(own("manifest-foreign-kernel", manifest_foreign_kernel));
    for (list, reports) in QEMU_GUESTS {
        let name = format!("qemu-guest-{}", list.split(['+']).next().unwrap_or_default().replace(':', "-"));
        t.push(own(name, move || qemu_guest(list, *reports)));
    }
    t.push(own("bench-exit-counts", bench_exit_counts));
    // Every Intel VMX model of the project's Bochs: the path it gets, or its refusal.
    t.push(own("cpu-model-list", cpu_model_list));
    for (m, _) in crate::platform::bochs::INTEL_VMX_MODELS {
        t.push(own(format!("cpu-model-{m}"), move || cpu_model(m)));
    }
    t.push(own("linux-smp-x2apic-ipiv-beside-guest", linux_beside_guest));
    t.push(own("linux-qemu-reference", linux_on_qemu));
    t.push(own("linux-smp-xapic-injection", linux_on_injection_path));
    // The hypervisor as an L1 under KVM on the project's Bochs.
    for mut case in nested_cases() {
        case.args.cpu_model = model.clone();
        t.push(Test::Nested(case));
    }
    // `cargo xtask bench --peer kvm` is too slow for the suite; its image must build.
    t.push(own("kvm-peer-image", kvm_peer_image));
    // kvm-unit-tests, where the folder is (test inputs, not part of the repository).
    let kut = crate::conformance::plan::kut_dir(None);
    if kut.is_dir() {
        for (name, paths, apics, only) in KUT_CASES {
            let (dir, m) = (kut.clone(), model.clone());
            t.push(own(*name, move || kut_case(&dir, paths, apics, *only, &m)));
        }
    } else {
        t.push(Test::Unavailable {
            name: "conformance-kvm-unit-tests".into(),
            why: format!("no kvm-unit-tests folder at {} (cargo xtask conformance --kut DIR runs them)", kut.display()),
        });
    }
    t
}
