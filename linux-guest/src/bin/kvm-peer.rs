//! The KVM peer's driver (`cargo xtask bench --peer kvm`), run by `/init` in the image that
//! boots Debian's kernel on the project's Bochs as the host of KVM. For each cell of its plan it
//! loads `kvm_intel` with the cell's parameters, starts Debian's QEMU with `-enable-kvm` on the
//! project's `ipi-bench` kernel (`sync=serial`), and at the guest's `SYNC begin` and `SYNC end`
//! lines reads KVM's own counters: QEMU's per-vCPU statistics (QMP `query-stats`) and the VM's
//! debugfs files. It then lets the guest go on with one byte on its serial line.
//!
//! KVM runs as on dedicated cores: each vCPU thread pinned to a CPU of its own, QEMU's other
//! threads and the driver on the remaining ones. It interprets nothing: each cell ends in one `REPORT {json}` line on the console with the
//! guest's report, the raw snapshots and how QEMU ended; `cargo xtask` computes the figures.
//!
//! The plan, one cell per line, fields separated by tabs:
//! `name  kvm_intel-parameters  vcpus  qemu-extra-arguments  kernel-arguments  timeout-seconds`
//! and optionally `kernel  initrd`: another multiboot kernel in the image than `ipi-bench` (the
//! kvm-unit-tests binaries of `cargo xtask conformance --peer kvm`) and its `-initrd`; a
//! `kernel` ending in `.img` is a disk image QEMU boots as a PC's first disk (the hypervisor's
//! own image, as an L1, for `--platform nested-kvm`), and an empty `kernel-arguments` passes no
//! `-append`. A `-m` among the extra arguments replaces the default 128 MiB. Every line the
//! guest prints is in the cell's report (`output`).

use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MODULES: &str = "/lib/modules";
const KERNEL: &str = "/ipi-bench";
const QMP: &str = "/tmp/qmp.sock";

struct Cell {
    name: String,
    params: String,
    vcpus: u32,
    qemu_extra: Vec<String>,
    append: String,
    timeout: Duration,
    kernel: String,
    initrd: Option<String>,
}

fn parse_plan(text: &str) -> Result<Vec<Cell>, String> {
    let mut cells = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, params, vcpus, extra, append, timeout, kernel, initrd) = match f[..] {
            [name, params, vcpus, extra, append, timeout] => (name, params, vcpus, extra, append, timeout, KERNEL, ""),
            [name, params, vcpus, extra, append, timeout, kernel, initrd] => {
                (name, params, vcpus, extra, append, timeout, kernel, initrd)
            }
            _ => return Err(format!("plan line {}: {} fields, not 6 or 8", n + 1, f.len())),
        };
        cells.push(Cell {
            name: name.into(),
            params: params.into(),
            vcpus: vcpus.parse().map_err(|_| format!("plan line {}: vcpus {vcpus:?}", n + 1))?,
            qemu_extra: extra.split_whitespace().map(str::to_string).collect(),
            append: append.into(),
            timeout: Duration::from_secs(timeout.parse().map_err(|_| format!("plan line {}: timeout", n + 1))?),
            kernel: kernel.into(),
            initrd: (!initrd.is_empty()).then(|| initrd.to_string()),
        });
    }
    Ok(cells)
}

/// One line on the console, drained before going on: `/init` ends the machine right after the
/// last one, and the serial port is slow.
fn report(v: Value) {
    println!("REPORT {v}");
    // SAFETY: tcdrain on this process' stdout; no memory is passed.
    unsafe { libc::tcdrain(1) };
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// (Re)loads kvm_intel with `params` (space-separated `key=value`) and returns what the module
/// says it runs with.
fn load_kvm_intel(params: &str) -> Result<Value, String> {
    if Path::new("/sys/module/kvm_intel").exists() {
        run("/bin/busybox", &["rmmod", "kvm_intel"])?;
    }
    for m in ["irqbypass", "kvm"] {
        if !Path::new(&format!("/sys/module/{m}")).exists() {
            run("/bin/busybox", &["insmod", &format!("{MODULES}/{m}.ko")])?;
        }
    }
    let mut args = vec![format!("{MODULES}/kvm-intel.ko")];
    args.extend(params.split_whitespace().map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("/bin/busybox", &[&["insmod"][..], &args].concat())?;
    let mut got = Map::new();
    let params = [
        ("kvm_intel", "enable_apicv"),
        ("kvm_intel", "enable_ipiv"),
        ("kvm_intel", "nested"),
        ("kvm_intel", "enable_shadow_vmcs"),
        ("kvm_intel", "preemption_timer"),
        ("kvm_intel", "ept"),
        ("kvm_intel", "vpid"),
        ("kvm", "halt_poll_ns"),
    ];
    for (m, p) in params {
        if let Ok(v) = std::fs::read_to_string(format!("/sys/module/{m}/parameters/{p}")) {
            got.insert(p.into(), json!(v.trim()));
        }
    }
    Ok(Value::Object(got))
}

/// One QMP connection: line-delimited JSON.
struct Qmp {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects once QEMU listens; gives up at `deadline` or when QEMU (`child`) has ended.
    fn connect(deadline: Instant, child: &mut Child) -> Result<Self, String> {
        let s = loop {
            match UnixStream::connect(QMP) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) => {
                    return Err(format!("QMP socket: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut q = Self { out: s.try_clone().map_err(|e| e.to_string())?, lines: BufReader::new(s) };
        q.read()?; // the greeting
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
            // Events come in between; only greetings and answers matter here.
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut req = json!({"execute": cmd});
        if !args.is_null() {
            req["arguments"] = args;
        }
        writeln!(self.out, "{req}").map_err(|e| e.to_string())?;
        let v = self.read()?;
        match v.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("QMP {cmd}: {v}")),
        }
    }
}

/// The VM's debugfs counters (`/sys/kernel/debug/kvm/PID-FD/`): every file that holds a number.
fn debugfs_vm(pid: u32) -> Value {
    let mut out = Map::new();
    let Ok(dir) = std::fs::read_dir("/sys/kernel/debug/kvm") else { return Value::Null };
    let Some(vm) = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pid}-"))))
    else {
        return Value::Null;
    };
    if let Ok(files) = std::fs::read_dir(&vm) {
        for f in files.filter_map(|e| e.ok()) {
            if let Ok(Ok(n)) = std::fs::read_to_string(f.path()).map(|t| t.trim().parse::<u64>()) {
                out.insert(f.file_name().to_string_lossy().into_owned(), json!(n));
            }
        }
    }
    Value::Object(out)
}

/// Reads what QEMU prints (the guest's COM1), line by line, onto a channel.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// KVM's counters now: per vCPU from QEMU (`{"qom-path", "stats": {name: value}}`, the scalar
/// statistics only: the histograms would only lengthen the console line) and per VM from
/// debugfs.
fn snapshot(qmp: &mut Qmp, pid: u32, at: &str) -> Value {
    let vcpus = match qmp.execute("query-stats", json!({"target": "vcpu"})) {
        Ok(Value::Array(list)) => Value::Array(
            list.iter()
                .map(|v| {
                    let stats: Map<String, Value> = v["stats"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["value"].is_u64())
                        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].clone())))
                        .collect();
                    json!({"qom-path": v["qom-path"], "provider": v["provider"], "stats": stats})
                })
                .collect(),
        ),
        Ok(other) => json!({"error": format!("query-stats answered {other}")}),
        Err(e) => json!({"error": e}),
    };
    json!({"at": at, "vcpus": vcpus, "vm": debugfs_vm(pid)})
}

/// Pins `threads` (task IDs) to `cpus`; the first error.
fn set_affinity(threads: &[i32], cpus: &[usize]) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it (CPU numbers come
    // from the online count, far below CPU_SETSIZE); sched_setaffinity reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        for &t in threads {
            if libc::sched_setaffinity(t, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(format!("sched_setaffinity({t}): {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// KVM on dedicated cores, as the hypervisor it is compared with runs: vCPU i on its own CPU
/// (the highest ones), QEMU's other threads and this driver on the rest (on all of them when
/// the vCPUs take every CPU). Returns what was done.
fn pin(qemu: u32, cpus: &Value) -> Value {
    // Not available_parallelism: that is this thread's own affinity, which the first cell narrows.
    // SAFETY: sysconf reads a system constant.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let vcpu_threads: Vec<i32> =
        cpus.as_array().into_iter().flatten().filter_map(|c| c["thread-id"].as_i64().map(|t| t as i32)).collect();
    let first = online.saturating_sub(vcpu_threads.len());
    let vcpu_cpus: Vec<usize> = (0..vcpu_threads.len()).map(|i| (first + i) % online).collect();
    let others: Vec<usize> = if first == 0 { (0..online).collect() } else { (0..first).collect() };
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{qemu}/task"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|t| !vcpu_threads.contains(t))
        .collect();
    let done = set_affinity(&[0], &others)
        .and_then(|_| set_affinity(&tasks, &others))
        .and_then(|_| vcpu_threads.iter().zip(&vcpu_cpus).try_for_each(|(t, c)| set_affinity(&[*t], &[*c])));
    json!({"vcpu_cpus": vcpu_cpus, "others": others, "error": done.err()})
}

fn ack(stdin: &mut ChildStdin) -> Result<(), String> {
    stdin.write_all(b"\n").and_then(|_| stdin.flush()).map_err(|e| format!("writing to the guest's COM1: {e}"))
}

fn start_qemu(cell: &Cell) -> Result<Child, String> {
    let _ = std::fs::remove_file(QMP);
    let mut cmd = Command::new("/usr/bin/qemu-system-x86_64");
    cmd.args(["-enable-kvm", "-cpu", "host", "-nodefaults", "-display", "none", "-serial", "stdio"])
        .args(["-smp", &cell.vcpus.to_string()])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"])
        .args(["-qmp", &format!("unix:{QMP},server=on,wait=off")]);
    if !cell.qemu_extra.iter().any(|a| a == "-m") {
        cmd.args(["-m", "128"]);
    }
    cmd.args(&cell.qemu_extra);
    if cell.kernel.ends_with(".img") {
        // A disk image's boot loader asks the BIOS for a VESA mode: give it a VGA card.
        cmd.args(["-machine", "q35", "-vga", "std", "-no-reboot"])
            .arg("-drive")
            .arg(format!("format=raw,file={}", cell.kernel));
    } else {
        cmd.args(["-kernel", &cell.kernel]);
    }
    if !cell.append.is_empty() {
        cmd.args(["-append", &cell.append]);
    }
    cmd.args(cell.initrd.iter().flat_map(|i| ["-initrd", i.as_str()]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().map_err(|e| format!("starting QEMU: {e}"))
}

/// Runs one cell; everything it learnt, as the cell's report.
fn measure(cell: &Cell) -> Value {
    let mut rec = json!({"kvm_cell": cell.name});
    let start = Instant::now();
    let mut child = match start_qemu(cell) {
        Ok(c) => c,
        Err(e) => {
            rec["error"] = json!(e);
            return rec;
        }
    };
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped");
    let out = lines_of(child.stdout.take().expect("piped"));
    let err = lines_of(child.stderr.take().expect("piped"));
    let deadline = start + cell.timeout;
    let mut qmp = match Qmp::connect(deadline, &mut child) {
        Ok(q) => Some(q),
        Err(e) => {
            rec["error"] = json!(e);
            None
        }
    };
    if let Some(q) = qmp.as_mut() {
        rec["cpus"] = q.execute("query-cpus-fast", Value::Null).unwrap_or_else(|e| json!({"error": e}));
        rec["pinning"] = pin(pid, &rec["cpus"]);
    }
    let mut snapshots = Vec::new();
    let mut guest_reports = Vec::new();
    let mut output = Vec::new();
    let mut timed_out = false;
    loop {
        match out.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                println!("guest: {line}");
                let line = line.trim_end();
                output.push(line.to_string());
                if let Some(at) = line.strip_prefix("SYNC ") {
                    if let Some(q) = qmp.as_mut() {
                        snapshots.push(snapshot(q, pid, at));
                    }
                    if let Err(e) = ack(&mut stdin) {
                        rec["error"] = json!(e);
                    }
                } else if let Some(j) = line.strip_prefix("REPORT ") {
                    guest_reports.push(serde_json::from_str::<Value>(j).unwrap_or_else(|_| json!(j)));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            timed_out = true;
            // Where each vCPU is, for the report: QEMU's `info registers -a`, the lines with RIP
            // and the activity.
            if let Some(q) = qmp.as_mut() {
                let regs = q.execute("human-monitor-command", json!({"command-line": "info registers -a"}));
                let text = regs.as_ref().ok().and_then(Value::as_str).unwrap_or_default();
                let keep: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("CPU#") || l.starts_with("RIP=") || l.contains("HLT"))
                    .collect();
                rec["stuck_at"] = json!(keep.join("\n"));
            }
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().ok().and_then(|s| s.code());
    let stderr: Vec<String> = err.try_iter().collect();
    rec["snapshots"] = json!(snapshots);
    rec["guest"] = json!(guest_reports);
    rec["output"] = json!(output);
    rec["status"] = json!(status);
    rec["timed_out"] = json!(timed_out);
    rec["qemu_stderr"] = json!(stderr.join("\n"));
    rec["wall_ms"] = json!(start.elapsed().as_millis() as u64);
    rec
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/kvm-peer.plan".into());
    let cells = match std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}")).and_then(|t| parse_plan(&t)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvm-peer: {e}");
            std::process::exit(2);
        }
    };
    let mut loaded: Option<String> = None;
    let mut module_error: Option<String> = None;
    for cell in &cells {
        if loaded.as_deref() != Some(cell.params.as_str()) {
            loaded = Some(cell.params.clone());
            match load_kvm_intel(&cell.params) {
                Ok(got) => {
                    module_error = None;
                    report(json!({"kvm_module": cell.params, "parameters": got}));
                }
                Err(e) => module_error = Some(e),
            }
        }
        if let Some(e) = &module_error {
            report(json!({"kvm_cell": cell.name, "error": format!("loading kvm_intel {}: {e}", cell.params)}));
            continue;
        }
        eprintln!("kvm-peer: {} (kvm_intel {})", cell.name, cell.params);
        report(measure(cell));
    }
}
