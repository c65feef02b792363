//! Running an emulator with a deadline: its serial log followed while it runs, killed when
//! the time is up.

use anyhow::Result;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waits for an emulator, echoing its serial log (`echo`), and kills it after `timeout_s`: its
/// exit status (`None` if killed) and whether the timeout did it.
pub fn supervise(
    mut child: std::process::Child,
    serial: &Path,
    echo: bool,
    timeout_s: u64,
) -> Result<(Option<i32>, bool)> {
    let mut tail = SerialTail::new(serial, echo);
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let ended = loop {
        tail.pump()?;
        if let Some(st) = child.try_wait()? {
            break (st.code(), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    tail.pump()?;
    Ok(ended)
}

/// Follows the serial log file while the emulator writes it.
struct SerialTail {
    file: PathBuf,
    pos: u64,
    echo: bool,
}

impl SerialTail {
    fn new(file: &Path, echo: bool) -> Self {
        Self { file: file.to_path_buf(), pos: 0, echo }
    }

    fn pump(&mut self) -> Result<()> {
        if !self.echo {
            return Ok(());
        }
        let Ok(mut f) = fs::File::open(&self.file) else { return Ok(()) };
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)?;
        out.flush()?;
        Ok(())
    }
}

/// Prints the last `n` lines of a log.
pub fn print_tail(log: &str, n: usize) {
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- last {} lines ---", n.min(lines.len()));
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{l}");
    }
}
