//! The Linux guest's workload (issue 12), run by the initramfs' `/init` on every online CPU:
//!
//! - `wake`: a token passed round a ring of threads, one pinned to each CPU, each asleep in a
//!   futex until its turn: every hop wakes a sleeping thread on another CPU (a reschedule IPI);
//! - `tlb`: helper threads on every other CPU keep reading a buffer while the first thread
//!   takes write permission away and back with `mprotect`: every downgrade flushes the TLBs of
//!   the CPUs running the process (TLB-shootdown IPIs);
//! - `membarrier`: `MEMBARRIER_CMD_PRIVATE_EXPEDITED` while the helpers run (function-call
//!   IPIs to every CPU running the process).
//!
//! Each part runs a fixed count and reports, as one `REPORT {json}` line on the console, its
//! operations per second and the guest's own IPI counts by kind (the RES, CAL and TLB lines of
//! `/proc/interrupts`, before and after). `ipi-workload exit CODE` ends the VM through
//! isa-debug-exit (port 0xF4), which is how `/init` hands the result back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

/// A part's time by the guest's clock and in TSC ticks: the ticks compare runs whose clocks
/// were calibrated differently (under Bochs a kernel booted directly takes the TSC for 2.2 GHz
/// from CPUID 0x15, while a VM here is told the rate the hypervisor measured).
#[derive(Clone, Copy)]
struct Timer(Instant, u64);

impl Timer {
    fn start() -> Self {
        // SAFETY: RDTSC has no memory effects.
        Self(Instant::now(), unsafe { core::arch::x86_64::_rdtsc() })
    }

    /// (seconds, TSC ticks) since the start.
    fn elapsed(self) -> (f64, u64) {
        // SAFETY: as above.
        let now = unsafe { core::arch::x86_64::_rdtsc() };
        (self.0.elapsed().as_secs_f64(), now.wrapping_sub(self.1))
    }
}

/// The IPI counters of `/proc/interrupts` this workload reads, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default)]
struct Ipis {
    res: u64,
    cal: u64,
    tlb: u64,
}

impl Ipis {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        let sum = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.split_whitespace().skip(1).map_while(|w| w.parse::<u64>().ok()).sum())
                .unwrap_or(0)
        };
        Self { res: sum("RES:"), cal: sum("CAL:"), tlb: sum("TLB:") }
    }

    fn since(self, before: Self) -> Self {
        Self { res: self.res - before.res, cal: self.cal - before.cal, tlb: self.tlb - before.tlb }
    }

    /// IPIs received: a TLB shootdown is a function-call IPI on x86 (`flush_tlb_multi` goes
    /// through `smp_call_function_many_cond`), so TLB counts a subset of CAL, not more IPIs.
    fn total(self) -> u64 {
        self.res + self.cal
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// Pins the calling thread to CPU `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!("sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}

fn futex_wait(word: &AtomicU32, value: u32) {
    // SAFETY: FUTEX_WAIT reads the word atomically and sleeps while it holds `value`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, value, 0usize);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE wakes at most one waiter on the word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

/// Marks the start of a part: the hypervisor's exit census cuts its windows at each REPORT,
/// so the window that ends at the part's result line holds the part's exits alone.
fn begin(part: &str) {
    use std::io::Write;
    println!("REPORT {{\"test\":\"linux-workload\",\"begin\":\"{part}\"}}");
    let _ = std::io::stdout().flush();
    // The console transmits from its interrupt: wait until the line has left the UART, so the
    // window starts before the part does.
    // SAFETY: tcdrain only waits on the descriptor.
    unsafe { libc::tcdrain(1) };
}

/// One result line.
fn report(part: &str, ops: u64, (seconds, tsc_ticks): (f64, u64), ipis: Ipis, cpus: usize) {
    println!(
        "REPORT {{\"test\":\"linux-workload\",\"workload\":\"{part}\",\"cpus\":{cpus},\"ops\":{ops},\"seconds\":{seconds:.6},\"tsc_ticks\":{tsc_ticks},\"ops_per_s\":{:.1},\"guest_ipis\":{{\"RES\":{},\"CAL\":{},\"TLB\":{}}},\"guest_ipis_per_s\":{:.1}}}",
        ops as f64 / seconds,
        ipis.res,
        ipis.cal,
        ipis.tlb,
        ipis.total() as f64 / seconds
    );
}

/// `hops` passes of a token round a ring of one sleeping thread per CPU.
fn wake(cpus: usize, hops: u64) {
    let words: Arc<Vec<AtomicU32>> = Arc::new((0..cpus).map(|i| AtomicU32::new((i == 0) as u32)).collect());
    let before = Ipis::read();
    let start = Timer::start();
    let threads: Vec<_> = (0..cpus)
        .map(|me| {
            let words = words.clone();
            std::thread::spawn(move || {
                pin(me);
                let next = (me + 1) % cpus;
                // Hop h is made by thread h % cpus.
                let mine = (0..hops).filter(|h| (*h as usize) % cpus == me).count();
                for _ in 0..mine {
                    while words[me].load(Ordering::Acquire) == 0 {
                        futex_wait(&words[me], 0);
                    }
                    words[me].store(0, Ordering::Release);
                    words[next].store(1, Ordering::Release);
                    futex_wake(&words[next]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a wake thread panicked");
    }
    report("wake", hops, start.elapsed(), Ipis::read().since(before), cpus);
}

/// Helper threads on CPUs 1.. that keep touching `buf` until `stop`; the caller is on CPU 0.
fn helpers(cpus: usize, buf: usize, len: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (1..cpus)
        .map(|cpu| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(cpu);
                let mut sum = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for off in (0..len).step_by(4096) {
                        // SAFETY: `buf` is a live mapping of `len` bytes, always readable.
                        sum = sum.wrapping_add(unsafe { ((buf + off) as *const u8).read_volatile() } as u64);
                    }
                }
                std::hint::black_box(sum);
            })
        })
        .collect()
}

/// `rounds` write-permission downgrades (and restores) of a buffer every CPU reads.
fn tlb(cpus: usize, rounds: u64) {
    const LEN: usize = 16 * 4096;
    pin(0);
    // SAFETY: an anonymous private mapping; it is unmapped at the end.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(buf, libc::MAP_FAILED, "mmap");
    // SAFETY: the mapping is LEN bytes, writable.
    unsafe { std::ptr::write_bytes(buf as *mut u8, 1, LEN) };
    let stop = Arc::new(AtomicBool::new(false));
    let threads = helpers(cpus, buf as usize, LEN, &stop);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = Ipis::read();
    let start = Timer::start();
    for _ in 0..rounds {
        // SAFETY: the mapping is ours; helpers only read it, so PROT_READ never faults them.
        unsafe {
            assert_eq!(libc::mprotect(buf, LEN, libc::PROT_READ), 0, "mprotect");
            assert_eq!(libc::mprotect(buf, LEN, libc::PROT_READ | libc::PROT_WRITE), 0, "mprotect");
            // Touch it for writing again, so the next downgrade has entries to shoot down.
            (buf as *mut u8).write_volatile(2);
        }
    }
    let elapsed = start.elapsed();
    let ipis = Ipis::read().since(before);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a tlb helper panicked");
    }
    // SAFETY: nothing uses the mapping any more.
    unsafe { libc::munmap(buf, LEN) };
    report("tlb", rounds, elapsed, ipis, cpus);
}

/// `calls` expedited private membarriers while every other CPU runs this process.
fn membarrier(cpus: usize, calls: u64) {
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
    pin(0);
    // SAFETY: membarrier takes a command and flags; registration has no memory effects.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0) };
    assert_eq!(r, 0, "membarrier register: {}", std::io::Error::last_os_error());
    let page = vec![0u8; 4096];
    let stop = Arc::new(AtomicBool::new(false));
    let threads = helpers(cpus, page.as_ptr() as usize, page.len(), &stop);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = Ipis::read();
    let start = Timer::start();
    for _ in 0..calls {
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0) };
        assert_eq!(r, 0, "membarrier: {}", std::io::Error::last_os_error());
    }
    let elapsed = start.elapsed();
    let ipis = Ipis::read().since(before);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a membarrier helper panicked");
    }
    report("membarrier", calls, elapsed, ipis, cpus);
}

/// isa-debug-exit: the VM (or Bochs) ends with `code` (0: pass).
fn exit_vm(code: u8) -> ! {
    // SAFETY: ioperm grants this (root) process port 0xF4 only; OUT to it ends the machine.
    unsafe {
        if libc::ioperm(0xf4, 1, 1) != 0 {
            eprintln!("ioperm(0xf4): {}", std::io::Error::last_os_error());
            std::process::exit(2);
        }
        std::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") code, options(nomem, nostack));
    }
    eprintln!("isa-debug-exit did not end the machine");
    std::process::exit(3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |key: &str, default: u64| -> u64 {
        args.iter().find_map(|a| a.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("exit") => exit_vm(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
        Some("run") => {
            let cpus = online_cpus();
            println!("ipi-workload: {cpus} CPUs online");
            begin("wake");
            wake(cpus, arg("wake", 2000));
            begin("tlb");
            tlb(cpus, arg("tlb", 500));
            begin("membarrier");
            membarrier(cpus, arg("membarrier", 2000));
            println!("ipi-workload: done");
        }
        _ => {
            eprintln!("usage: ipi-workload run [wake=N] [tlb=N] [membarrier=N] | exit CODE");
            std::process::exit(2);
        }
    }
}
